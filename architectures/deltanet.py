"""deltanet and gated-deltanet: the delta rule (Schlag et al. 2021, arXiv:2102.11174; chunked as
in Yang et al. 2024, arXiv:2406.06484) and Gated DeltaNet (Yang et al. 2024, arXiv:2412.06464).

q, k and v pass a short causal convolution per channel (size 4, as fla's layers and the
Gated DeltaNet paper have them; `conv_size: null` leaves it out), then per head, q and k
swish-activated and L2-normalised, v swish-activated, a write strength
β_t = sigmoid(W_β x_t) and, gated, a decay α_t = exp(−exp(A) · softplus(W_α x_t + b)):
    S_t = α_t (I − β_t k_tᵀ k_t) S_{t-1} + β_t k_tᵀ v_t        o_t = q_t S_t / √d
(the state's answer for k_t moves towards v_t by β_t: an error-correcting write); then
y_t = W_out rms_norm(o_t), times swish(W_g x_t) in the gated form. A state of d × d per head,
and the convolution's last 3 inputs per channel.
`kernel`: `chunk_delta_rule` / `chunk_gated_delta_rule` from ablate.nn.ops (torch) or
flash-linear-attention (fla); unset, fla where it is installed and the model is on CUDA
(`ablate.nn.ops.kernels`); decoding from a state runs ablate's chunked op for the prompt and
the recurrent one per token.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ablate.mixers.recurrent import QKVRecurrent
from ablate.mixers.registry import Size, register
from ablate.nn import ops
from ablate.nn.layers import rms_norm, spread_decays
from ablate.nn.ops.kernels import Kernel


@register("deltanet")
class DeltaNet(QKVRecurrent):
    """The delta rule (Schlag et al. 2021; Yang et al. 2024): L2-normalised keys, a write strength β per token.

    q, k, v through a short causal convolution per channel (as fla's layers have them,
    `conv_size`), swish, and L2-normalised q, k; β = sigmoid(W x); S_t = (I − β k_tᵀk_t)S_{t−1}
    + β k_tᵀv_t; head RMS norm.
    """

    chunk, recurrent = staticmethod(ops.chunk_delta_rule), staticmethod(ops.recurrent_delta_rule)

    def __init__(
        self, cfg, layer_idx, *, chunk_size: Size = 64, conv_size: Size | None = 4, kernel: Kernel | None = None
    ):
        super().__init__(cfg, chunk_size=chunk_size, conv_size=conv_size, kernel=kernel)
        self.beta = nn.Linear(cfg.d_model, cfg.n_heads, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)

    def inputs(self, x: torch.Tensor, mixed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The op's arguments from x and its convolved projection: q, k, v as (B, T, H, d) and β
        as (B, T, H)."""
        q, k, v = F.silu(mixed).unflatten(-1, (3, self.n_heads, -1)).unbind(2)
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, torch.sigmoid(self.beta(x))

    def output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Each head's (B, T, H, d) output normed and mapped back."""
        return self.out(rms_norm(o).flatten(2))


@register("gated-deltanet")
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet (Yang et al. 2024): the delta rule with a decay per head set by the input, and an output gate.

    The delta rule times a decay per head α = exp(−exp(A)·softplus(W x + b)), A and b started as
    Mamba-2 starts them; swish output gate.
    """

    chunk, recurrent = staticmethod(ops.chunk_gated_delta_rule), staticmethod(ops.recurrent_gated_delta_rule)

    def __init__(
        self, cfg, layer_idx, *, chunk_size: Size = 64, conv_size: Size | None = 4, kernel: Kernel | None = None
    ):
        super().__init__(cfg, layer_idx, chunk_size=chunk_size, conv_size=conv_size, kernel=kernel)
        self.alpha = nn.Linear(cfg.d_model, cfg.n_heads, bias=False)
        self.A_log = nn.Parameter(torch.zeros(cfg.n_heads))
        self.dt_bias = nn.Parameter(torch.zeros(cfg.n_heads))
        self.out_gate = nn.Linear(cfg.d_model, cfg.qkv_dim, bias=False)

    def reset_parameters(self) -> None:
        """Decay rates spread over the heads, as Mamba-2 starts them."""
        spread_decays(self.A_log, self.dt_bias)

    def inputs(self, x, mixed):
        """q, k, v, the log decay g (B, T, H) and β."""
        q, k, v, beta = super().inputs(x, mixed)
        return q, k, v, -self.A_log.exp() * F.softplus(self.alpha(x) + self.dt_bias), beta

    def output(self, x, o):
        """Each head's output normed, gated by swish(W_g x) and mapped back."""
        return self.out(rms_norm(o).flatten(2) * F.silu(self.out_gate(x)))

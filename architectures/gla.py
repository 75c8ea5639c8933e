"""gla: gated linear attention (Yang et al. 2023, arXiv:2312.06635).

Per head, a decay per key channel that the input sets, through a low-rank gate:
    α_t = exp(logsigmoid(W_up W_down x_t + b) / 16)        (16: GLA's gate normaliser)
    S_t = diag(α_t) S_{t-1} + k_tᵀ v_t                     o_t = q_t S_t / √d
    y_t = W_out (rms_norm(o_t) ⊙ swish(W_g x_t))           (norm per head)
A state of d × d per head. `conv_size` puts a short causal convolution per channel on q, k and v
first (none by default, as in the paper and fla's GLA layer).
`kernel`: `chunk_gla` from ablate.nn.ops (torch) or flash-linear-attention (fla); unset, fla
where it is installed and the model is on CUDA (`ablate.nn.ops.kernels`); decoding from a state
runs ablate's `chunk_gla` for the prompt and `recurrent_gla` per token.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ablate.mixers.recurrent import QKVRecurrent
from ablate.mixers.registry import Size, register
from ablate.nn import ops
from ablate.nn.layers import rms_norm
from ablate.nn.ops.kernels import Kernel

GATE_NORMALIZER = 16.0  # the decay's log is logsigmoid / 16: close to 1, as GLA starts it


@register("gla")
class GatedLinearAttention(QKVRecurrent):
    """Gated linear attention (Yang et al. 2023): a per-channel decay set by the input through a low-rank gate.

    The gate is logsigmoid / 16 through a rank-`gate_rank` map; head RMS norm, swish output
    gate; a d × d state per head.
    """

    chunk, recurrent = staticmethod(ops.chunk_gla), staticmethod(ops.recurrent_gla)

    def __init__(
        self,
        cfg,
        layer_idx,
        *,
        gate_rank: Size = 16,
        chunk_size: Size = 16,
        conv_size: Size | None = None,
        kernel: Kernel | None = None,
    ):
        super().__init__(cfg, chunk_size=chunk_size, conv_size=conv_size, kernel=kernel)
        self.gate_down = nn.Linear(cfg.d_model, gate_rank, bias=False)
        self.gate_up = nn.Linear(gate_rank, cfg.qkv_dim, bias=True)
        self.out_gate = nn.Linear(cfg.d_model, cfg.qkv_dim, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)

    def inputs(self, x: torch.Tensor, mixed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v as (B, T, H, d) from the convolved projection, and the log decay g from x."""
        q, k, v = mixed.unflatten(-1, (3, self.n_heads, -1)).unbind(2)
        g = F.logsigmoid(self.gate_up(self.gate_down(x))).unflatten(-1, (self.n_heads, -1)) / GATE_NORMALIZER
        return q, k, v, g

    def output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Each head's (B, T, H, d) output normed, gated by swish(W_g x) and mapped back."""
        return self.out(rms_norm(o).flatten(2) * F.silu(self.out_gate(x)))

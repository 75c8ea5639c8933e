"""linear-attn: causal linear attention (Katharopoulos et al. 2020, arXiv:2006.16236).

Per head, with the positive feature map φ(x) = elu(x) + 1 on q and k:
    S_t = S_{t-1} + φ(k_t)ᵀ v_t        y_t = φ(q_t) S_t / (φ(q_t) · Σ_{s≤t} φ(k_s))
(`normalize: false` drops the denominator). A state of d × (d + 1) per head, whatever the context.
`conv_size` puts a short causal convolution per channel on q, k and v first (none by default, as
in the paper; Zoology's and fla's recurrent layers use one for recall).
`kernel`: `chunk_linear_attn` from ablate.nn.ops (torch) or flash-linear-attention (fla); unset, fla
where it is installed and the model is on CUDA (`ablate.nn.ops.kernels`); decoding from a state
runs ablate's `chunk_linear_attn` for the prompt and `recurrent_linear_attn` per token.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ablate.mixers.recurrent import QKVRecurrent
from ablate.mixers.registry import Size, register
from ablate.nn import ops
from ablate.nn.ops.kernels import Kernel


@register("linear-attn")
class LinearAttention(QKVRecurrent):
    """Causal linear attention with elu+1 features (Katharopoulos et al. 2020), normalised.

    S_t = S_{t−1} + φ(k_t)ᵀv_t, y_t = φ(q_t)S_t normalised by φ(q_t)·Σφ(k) (`normalize`); a d ×
    (d + 1) state per head. `conv_size`: a short causal convolution on q, k, v.
    """

    chunk, recurrent = staticmethod(ops.chunk_linear_attn), staticmethod(ops.recurrent_linear_attn)

    def __init__(
        self,
        cfg,
        layer_idx,
        *,
        normalize: bool = True,
        chunk_size: Size = 64,
        conv_size: Size | None = None,
        kernel: Kernel | None = None,
    ):
        super().__init__(cfg, chunk_size=chunk_size, conv_size=conv_size, kernel=kernel)
        self.normalize = normalize
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)

    def inputs(self, x: torch.Tensor, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, T, H, d) from the convolved projection, q and k through elu + 1."""
        q, k, v = mixed.unflatten(-1, (3, self.n_heads, -1)).unbind(2)
        return F.elu(q) + 1, F.elu(k) + 1, v

    def options(self):
        return {"normalize": self.normalize}

    def state_size(self):
        """A d × (d + 1) state per head (d × d without the normaliser), and the convolution's tail."""
        C = self.out.in_features
        d = C // self.n_heads
        return self.n_heads * d * (d + int(self.normalize)) + self.conv.state_size()

"""mha: multi-head softmax attention with rotary positions, QK-norm and an optional window."""

import torch
import torch.nn.functional as F
from torch import nn

from ablate.errors import AblateError
from ablate.layers import Rotary, rms_norm
from ablate.registry import Mixer, register


@register("mha")
class MultiHeadAttention(Mixer):
    """Causal softmax attention (rotary, QK-norm); `window` makes it sliding-window local."""

    def __init__(self, cfg, *, window: int | None = None, rope: bool = True, qk_norm: bool = True):
        super().__init__()
        if window is not None and (not isinstance(window, int) or window < 1):
            raise AblateError(f"mha window must be a positive integer or null, got {window!r}")
        if rope and cfg.head_dim % 2:
            raise AblateError(f"rotary needs an even head width, got qkv_dim/n_heads = {cfg.head_dim}")
        self.n_heads, self.qk_norm = cfg.n_heads, qk_norm
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.context) if rope else None
        if window is not None:
            t = torch.arange(cfg.context)
            lag = t[:, None] - t[None, :]
            self.register_buffer("mask", (lag >= 0) & (lag < window), persistent=False)
        else:
            self.mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if self.mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask[:T, :T])
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

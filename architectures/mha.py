"""mha: multi-head softmax attention with rotary positions, QK-norm and an optional window.

QK-norm bounds every score q·k/√d by √d (5.7 at d = 32): too flat for attention to pick one
key among many, and such a model fails associative recall. So, as in QK-Norm (Henry et al.
2020), each head learns a gain on its normed scores, starting at 1.
"""

import torch
from torch import nn

from ablate.mixers.registry import Mixer, Size, register
from ablate.nn.layers import (
    Rotary,
    alibi,
    attention_probs,
    cached_attention,
    kv_cache,
    rms_norm,
    slopes_of,
    softmax_attention,
)


@register("mha")
class MultiHeadAttention(Mixer):
    """Causal softmax attention (rotary, QK-norm); `window` makes it sliding-window local.

    Through `scaled_dot_product_attention`. QK-norm carries a learned gain per head (`qk_norm:
    false`: plain q·k/√d); `window: n` attends to the last n positions.

    Rotary and QK-norm apply where both the option and the backbone say so (`pos: rope`,
    `qk_norm: true`); `pos: alibi` adds ALiBi's per-head linear bias −m·(t − t′) to the scores
    instead (Press et al. 2022); the backbone's `bias` gives the maps biases and its `dropout` drops
    attention weights in training. Without rotary and QK-norm, and with biases, this is
    GPT-2's attention.
    """

    def __init__(self, cfg, layer_idx, *, window: Size | None = None, rope: bool = True, qk_norm: bool = True):
        super().__init__()
        self.n_heads, self.window, self.dropout = cfg.n_heads, window, cfg.dropout
        self.qk_norm = qk_norm and cfg.qk_norm
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=cfg.bias)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=cfg.bias)
        self.rotary = Rotary(cfg.head_dim, cfg.context) if rope and cfg.pos == "rope" else None
        self.qk_gain = nn.Parameter(torch.ones(cfg.n_heads)) if self.qk_norm else None
        self.alibi = alibi(cfg, cfg.n_heads)

    def reset_parameters(self) -> None:
        if self.qk_gain is not None:
            nn.init.ones_(self.qk_gain)

    cannot_decode = None

    def heads(self, x: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, H, T, d) for positions start, start + 1, …, rotated and normed (q scaled
        by its head's gain)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if self.qk_norm:
            q, k = rms_norm(q) * self.qk_gain[:, None, None], rms_norm(k)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prefill(x)[0]

    def prefill(self, x):
        """The output, and the KV cache: every key and value, or the last `window` of them."""
        q, k, v = self.heads(x)
        y = softmax_attention(q, k, v, self.window, self.dropout if self.training else 0.0, slopes_of(self.alibi))
        return self.output(y), kv_cache(k, v, self.window)

    def step(self, x, state, pos):
        q, k, v = self.heads(x, pos)
        state = kv_cache(k, v, self.window, state)
        return self.output(cached_attention(q, state, slopes_of(self.alibi))), state

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, T, d) heads concatenated and mapped back to the stream."""
        return self.out(y.transpose(1, 2).flatten(2))

    def attention_probs(self, x):
        q, k, _ = self.heads(x)
        return attention_probs(q, k, self.window, slopes_of(self.alibi))

    def state_size(self):
        return 2 * self.window * self.out.in_features if self.window else None  # a window of keys and values

"""based: Based (Arora et al. 2024, arXiv:2402.18668): linear attention whose feature map is the
second-order Taylor expansion of exp, on q and k projected to a small `feature_dim`, beside a
short sliding-window softmax attention (`window`) in the same layer.

Per head:
    linear   o_t = Σ_{s≤t} (1 + s_ts + s_ts²/2) v_s / Σ_{s≤t} (1 + s_ts + s_ts²/2),  s_ts = q_t·k_s / √feature_dim
    local    softmax attention over the last `window` positions, its q and k rotated (rotary, where
             the backbone has `pos: rope`; ALiBi's bias on its scores under `pos: alibi`) as in the
             paper's sliding-window attention: without
             positions a window sees an unordered set and cannot bind a key to the value after it
    y_t = W_out (o_t + local_t)
`conv_size` puts a short causal convolution per channel on the linear part's q, k and v (none by
default; the Based model interleaves such convolutions, and Zoology gives every recall model one).
Recurrent, the linear part carries (1 + f + f²) × (d + 1) numbers per head (f = feature_dim);
the local part its window's keys and values, the convolution its last conv_size − 1 inputs.
`kernel`: `parallel_based` from ablate.nn.ops (torch) or flash-linear-attention (fla); unset, fla
where it is installed and the model is on CUDA (`ablate.nn.ops.kernels`); decoding from a state
runs ablate's `chunk_linear_attn` on the feature maps for the prompt (O(T) memory) and
`recurrent_based` per token.
"""

import torch
from torch import nn

from ablate.mixers.registry import Mixer, Size, register
from ablate.nn import ops
from ablate.nn.layers import (
    Rotary,
    ShortConv,
    alibi,
    cached_attention,
    kv_cache,
    slopes_of,
    softmax_attention,
)
from ablate.nn.ops.based import feature_map
from ablate.nn.ops.kernels import Kernel, run_op


@register("based")
class Based(Mixer):
    """Based (Arora et al. 2024): Taylor-feature linear attention on a small feature_dim, plus sliding-window softmax.

    The Taylor map 1 + s + s²/2 of exp on q·k projected to `feature_dim`, plus sliding-window
    softmax attention in the same layer (rotary on its q and k where the backbone has `pos:
    rope`), summed; `conv_size` puts a short causal convolution on the linear part's q, k, v.
    """

    def __init__(
        self,
        cfg,
        layer_idx,
        *,
        feature_dim: Size = 16,
        window: Size = 64,
        conv_size: Size | None = None,
        kernel: Kernel | None = None,
    ):
        super().__init__()
        self.n_heads, self.feature_dim, self.window, self.kernel = cfg.n_heads, feature_dim, window, kernel
        self.qk = nn.Linear(cfg.d_model, 2 * cfg.n_heads * feature_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.qkv_dim, bias=False)
        self.conv = ShortConv(2 * cfg.n_heads * feature_dim + cfg.qkv_dim, conv_size)
        self.local_qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.context) if cfg.pos == "rope" else None
        self.alibi = alibi(cfg, cfg.n_heads)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)

    cannot_decode = None

    def linear_input(self, x: torch.Tensor) -> torch.Tensor:
        """The linear part's q, k and v projections side by side, as its convolution takes them."""
        return torch.cat([self.qk(x), self.v(x)], dim=-1)

    def linear_heads(self, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The linear part's q, k (B, T, H, feature_dim) and v (B, T, H, d) from the convolved projections."""
        qk, v = mixed.split([self.qk.out_features, self.v.out_features], -1)
        q, k = qk.unflatten(-1, (2, self.n_heads, self.feature_dim)).unbind(2)
        return q, k, v.unflatten(-1, (self.n_heads, -1))

    def local_heads(self, x: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, ...]:
        """The local part's q, k, v (B, H, T, d) for positions start, start + 1, …, q and k rotated."""
        lq, lk, lv = self.local_qkv(x).unflatten(-1, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            lq, lk = self.rotary(lq, start), self.rotary(lk, start)
        return lq, lk, lv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear, _ = run_op(ops.parallel_based, self.kernel, *self.linear_heads(self.conv(self.linear_input(x))))
        local = softmax_attention(*self.local_heads(x), min(self.window, x.size(1)), slopes=slopes_of(self.alibi))
        return self.output(linear, local)

    def prefill(self, x):
        """The output; the linear part's state (its feature-map sums, `recurrent_based`'s), its
        convolution's tail, and the window's keys and values. The linear part runs chunked on the
        feature maps, in O(T) memory where the parallel form takes O(T²)."""
        mixed, tail = self.conv.prefill(self.linear_input(x))
        q, k, v = self.linear_heads(mixed)
        features = feature_map(q * self.feature_dim**-0.5), feature_map(k)
        linear, state = ops.chunk_linear_attn(*features, v, scale=1.0, output_final_state=True)
        lq, lk, lv = self.local_heads(x)
        local = softmax_attention(lq, lk, lv, min(self.window, x.size(1)), slopes=slopes_of(self.alibi))
        return self.output(linear, local), {"conv": tail, "state": state, "window": kv_cache(lk, lv, self.window)}

    def step(self, x, state, pos):
        mixed, tail = self.conv.step(self.linear_input(x), state["conv"])
        linear, s = ops.recurrent_based(
            *self.linear_heads(mixed), initial_state=state["state"], output_final_state=True
        )
        lq, lk, lv = self.local_heads(x, pos)
        window = kv_cache(lk, lv, self.window, state["window"])
        local = cached_attention(lq, window, slopes_of(self.alibi))
        return self.output(linear, local), {"conv": tail, "state": s, "window": window}

    def output(self, linear: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """The linear part's (B, T, H, d) and the local part's (B, H, T, d) outputs summed, mapped back."""
        return self.out((linear + local.transpose(1, 2)).flatten(2))

    def state_size(self):
        f, C = self.feature_dim, self.out.in_features
        d = C // self.n_heads
        return self.n_heads * (1 + f + f * f) * (d + 1) + 2 * self.window * C + self.conv.state_size()

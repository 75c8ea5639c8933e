"""based: Based (Arora et al. 2024, arXiv:2402.18668): linear attention whose feature map is the
second-order Taylor expansion of exp, on q and k projected to a small `feature_dim`, beside a
short sliding-window softmax attention (`window`) in the same layer.

Per head:
    linear   o_t = Σ_{s≤t} (1 + s_ts + s_ts²/2) v_s / Σ_{s≤t} (1 + s_ts + s_ts²/2),  s_ts = q_t·k_s / √feature_dim
    local    softmax attention over the last `window` positions, its q and k rotated (rotary, where
             the backbone has `pos: rope`) as in the paper's sliding-window attention: without
             positions a window sees an unordered set and cannot bind a key to the value after it
    y_t = W_out (o_t + local_t)
`conv_size` puts a short causal convolution per channel on the linear part's q, k and v (none by
default; the Based model interleaves such convolutions, and Zoology gives every recall model one).
Recurrent, the linear part carries (1 + f + f²) × (d + 1) numbers per head (f = feature_dim);
the local part its window's keys and values, the convolution its last conv_size − 1 inputs.
`kernel`: `parallel_based` from ablate.nn.ops (torch) or flash-linear-attention (fla); unset, fla
where it is installed and the model is on CUDA (`ablate.nn.ops.kernels`).
"""

import torch
from torch import nn

from ablate.mixers.registry import Mixer, check_int, register
from ablate.nn.layers import Rotary, ShortConv, attention_softmax_flops, softmax_attention
from ablate.nn.ops.kernels import check_kernel, run_op


@register("based")
class Based(Mixer):
    """Based (Arora et al. 2024): Taylor-feature linear attention on a small feature_dim, plus sliding-window softmax."""

    def __init__(
        self,
        cfg,
        layer_idx,
        *,
        feature_dim: int = 16,
        window: int = 64,
        conv_size: int | None = None,
        kernel: str | None = None,
    ):
        super().__init__()
        check_int(feature_dim, "based feature_dim")
        check_int(window, "based window")
        check_int(conv_size, "based conv_size", allow_none=True)
        check_kernel(kernel, "based")
        self.n_heads, self.feature_dim, self.window, self.kernel = cfg.n_heads, feature_dim, window, kernel
        self.qk = nn.Linear(cfg.d_model, 2 * cfg.n_heads * feature_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.qkv_dim, bias=False)
        self.conv = ShortConv(2 * cfg.n_heads * feature_dim + cfg.qkv_dim, conv_size)
        self.local_qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.context) if cfg.pos == "rope" else None
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        qk, v = self.conv(torch.cat([self.qk(x), self.v(x)], dim=-1)).split(
            [self.qk.out_features, self.v.out_features], -1
        )
        q, k = qk.view(B, T, 2, self.n_heads, self.feature_dim).unbind(2)
        linear, _ = run_op("parallel_based", self.kernel, q, k, v.reshape(B, T, self.n_heads, -1))
        lq, lk, lv = self.local_qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            lq, lk = self.rotary(lq), self.rotary(lk)
        local = softmax_attention(lq, lk, lv, min(self.window, T)).transpose(1, 2)
        return self.out((linear + local).reshape(B, T, -1))

    def elementwise_flops(self, T):
        """The Taylor polynomial of every causal score and its normaliser (5 per score), and the
        window's softmax."""
        return 5 * self.n_heads * T * (T + 1) / (2 * T) + attention_softmax_flops(self.n_heads, T, self.window)

    def state_size(self):
        f, C = self.feature_dim, self.out.in_features
        d = C // self.n_heads
        return self.n_heads * (1 + f + f * f) * (d + 1) + 2 * self.window * C + self.conv.state_size()

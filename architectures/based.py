"""based: Based (Arora et al. 2024, arXiv:2402.18668): linear attention whose feature map is the
second-order Taylor expansion of exp, on q and k projected to a small `feature_dim`, beside a
short sliding-window softmax attention (`window`) in the same layer.

Per head:
    linear   o_t = Σ_{s≤t} (1 + s_ts + s_ts²/2) v_s / Σ_{s≤t} (1 + s_ts + s_ts²/2),  s_ts = q_t·k_s / √feature_dim
    local    softmax attention over the last `window` positions
    y_t = W_out (o_t + local_t)
Recurrent, the linear part carries (1 + f + f²) × (d + 1) numbers per head (f = feature_dim);
the local part its window's keys and values.
`kernel`: `parallel_based` from ablate.nn.ops (torch) or flash-linear-attention (fla); unset, fla
where it is installed and the model is on CUDA (`ablate.nn.ops.kernels`).
"""

import torch
from torch import nn

from ablate.mixers.registry import Mixer, check_int, register
from ablate.nn.layers import attention_softmax_flops, softmax_attention
from ablate.nn.ops.kernels import check_kernel, run_op


@register("based")
class Based(Mixer):
    """Based (Arora et al. 2024): Taylor-feature linear attention on a small feature_dim, plus sliding-window softmax."""

    def __init__(self, cfg, layer_idx, *, feature_dim: int = 16, window: int = 64, kernel: str | None = None):
        super().__init__()
        check_int(feature_dim, "based feature_dim")
        check_int(window, "based window")
        check_kernel(kernel, "based")
        self.n_heads, self.feature_dim, self.window, self.kernel = cfg.n_heads, feature_dim, window, kernel
        self.qk = nn.Linear(cfg.d_model, 2 * cfg.n_heads * feature_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.qkv_dim, bias=False)
        self.local_qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k = self.qk(x).view(B, T, 2, self.n_heads, self.feature_dim).unbind(2)
        linear, _ = run_op("parallel_based", self.kernel, q, k, self.v(x).view(B, T, self.n_heads, -1))
        lq, lk, lv = self.local_qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        local = softmax_attention(lq, lk, lv, min(self.window, T)).transpose(1, 2)
        return self.out((linear + local).reshape(B, T, -1))

    def elementwise_flops(self, T):
        """The Taylor polynomial of every causal score and its normaliser (5 per score), and the
        window's softmax."""
        return 5 * self.n_heads * T * (T + 1) / (2 * T) + attention_softmax_flops(self.n_heads, T, self.window)

    def state_size(self):
        f, C = self.feature_dim, self.out.in_features
        d = C // self.n_heads
        return self.n_heads * (1 + f + f * f) * (d + 1) + 2 * self.window * C

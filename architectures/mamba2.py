"""mamba2: Mamba-2's SSD layer (Dao & Gu 2024, arXiv:2405.21060), in its chunked form.

One input map gives x (the heads' values, width P per head), B and C (d_state wide, shared by
the heads), a step size dt per head and the gate z. x, B and C pass a short causal depthwise
convolution and a swish; then per head, with a decay a = exp(−exp(A_log) · dt):
    S_t = a_t S_{t-1} + B_tᵀ (dt_t x_t)        y_t = C_t S_t + D x_t
that is linear attention with q = C, k = B, v = dt·x and a log decay per head (`chunk_simple_gla`);
then rms_norm(y ⊙ swish(z)) and the output map. A state of d_state × P per head, plus the
convolution's last d_conv − 1 inputs.
`kernel`: `chunk_simple_gla` from ablate.nn.ops (torch) or flash-linear-attention (fla); unset, fla
where it is installed and the model is on CUDA (`ablate.nn.ops.kernels`).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ablate.mixers.registry import Mixer, check_int, register
from ablate.nn.layers import ShortConv, rms_norm, spread_decays
from ablate.nn.ops.kernels import check_kernel, run_op


@register("mamba2")
class Mamba2(Mixer):
    """Mamba-2's SSD (Dao & Gu 2024): a short causal convolution, a decay per head set by the input, a gate."""

    def __init__(
        self, cfg, layer_idx, *, d_state: int = 16, d_conv: int = 4, chunk_size: int = 64, kernel: str | None = None
    ):
        super().__init__()
        for value, what in ((d_state, "d_state"), (d_conv, "d_conv"), (chunk_size, "chunk_size")):
            check_int(value, f"mamba2 {what}")
        check_kernel(kernel, "mamba2")
        self.n_heads, self.d_state, self.chunk_size, self.kernel = cfg.n_heads, d_state, chunk_size, kernel
        inner = cfg.qkv_dim
        self.conv_width = inner + 2 * d_state
        self.in_proj = nn.Linear(cfg.d_model, inner + self.conv_width + cfg.n_heads, bias=False)
        self.conv = ShortConv(self.conv_width, d_conv)
        self.A_log = nn.Parameter(torch.zeros(cfg.n_heads))
        self.dt_bias = nn.Parameter(torch.zeros(cfg.n_heads))
        self.D = nn.Parameter(torch.ones(cfg.n_heads))
        self.out = nn.Linear(inner, cfg.d_model, bias=False)

    def reset_parameters(self) -> None:
        """As Mamba-2 starts them, without a draw: A from 1 to 16 over the heads, step sizes from
        0.001 to 0.1 (geometric), the skip D at 1."""
        spread_decays(self.A_log, self.dt_bias)
        with torch.no_grad():
            self.D.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        inner, H = self.out.in_features, self.n_heads
        z, xbc, dt = self.in_proj(x).split([inner, self.conv_width, H], dim=-1)
        xbc = F.silu(self.conv(xbc))
        xs, b, c = xbc.split([inner, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, T, H)
        xs = xs.view(B, T, H, -1)
        q, k = (t[:, :, None, :].expand(B, T, H, self.d_state) for t in (c, b))
        decay = -self.A_log.exp() * dt
        y, _ = run_op(
            "chunk_simple_gla", self.kernel, q, k, xs * dt[..., None], decay, scale=1.0, chunk_size=self.chunk_size
        )
        y = y + self.D[:, None] * xs
        return self.out(rms_norm(y.reshape(B, T, inner) * F.silu(z)))

    def elementwise_flops(self, T):
        """The convolution's swish (4 per channel), softplus and decay (6 per head), dt·x, the
        chunk's decays (exp and product, 2 per pair of steps per head, and into and out of the
        state, 2 per channel), the skip (2), the gate (5 and its product) and the norm (5)."""
        C, L = self.out.in_features, min(self.chunk_size, T)
        return 4 * self.conv_width + self.n_heads * (6 + 2 * L) + C + 2 * C + 2 * C + 6 * C + 5 * C

    def state_size(self):
        C = self.out.in_features
        return self.d_state * C + self.conv.state_size()

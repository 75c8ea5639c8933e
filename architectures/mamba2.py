"""mamba2: Mamba-2's SSD layer (Dao & Gu 2024, arXiv:2405.21060), in its chunked form.

One input map gives x (the heads' values, width P per head), B and C (d_state wide, shared by
the heads), a step size dt per head and the gate z. x, B and C pass a short causal depthwise
convolution and a swish; then per head, with a decay a = exp(−exp(A_log) · dt):
    S_t = a_t S_{t-1} + B_tᵀ (dt_t x_t)        y_t = C_t S_t + D x_t
that is linear attention with q = C, k = B, v = dt·x and a log decay per head (`chunk_simple_gla`);
then rms_norm(y ⊙ swish(z)) and the output map. A state of d_state × P per head, plus the
convolution's last conv_size − 1 inputs.
`kernel`: `chunk_simple_gla` from ablate.nn.ops (torch) or flash-linear-attention (fla); unset, fla
where it is installed and the model is on CUDA (`ablate.nn.ops.kernels`); decoding from a state
runs ablate's `chunk_simple_gla` for the prompt and `recurrent_simple_gla` per token.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ablate.mixers.registry import Mixer, Size, register
from ablate.nn import ops
from ablate.nn.layers import ShortConv, rms_norm, spread_decays
from ablate.nn.ops.kernels import Kernel, run_op


@register("mamba2")
class Mamba2(Mixer):
    """Mamba-2's SSD (Dao & Gu 2024): a short causal convolution, a decay per head set by the input, a gate.

    A causal depthwise convolution (width `conv_size`) and swish on x, B, C; a decay per head
    from dt; y = C S + D x with S_t = a_t S_{t−1} + B_tᵀ(dt·x_t); RMS norm of y ⊙ swish(z).
    """

    def __init__(
        self,
        cfg,
        layer_idx,
        *,
        d_state: Size = 16,
        conv_size: Size = 4,
        chunk_size: Size = 64,
        kernel: Kernel | None = None,
    ):
        super().__init__()
        self.n_heads, self.d_state, self.chunk_size, self.kernel = cfg.n_heads, d_state, chunk_size, kernel
        inner = cfg.qkv_dim
        self.conv_width = inner + 2 * d_state
        self.in_proj = nn.Linear(cfg.d_model, inner + self.conv_width + cfg.n_heads, bias=False)
        self.conv = ShortConv(self.conv_width, conv_size)
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

    cannot_decode = None

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input map's gate z, the convolution's input (x, B, C) and the step sizes."""
        return self.in_proj(x).split([self.out.in_features, self.conv_width, self.n_heads], dim=-1)

    def inputs(self, xbc: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """From the convolved (x, B, C) and the raw step sizes: the heads' values xs (B, T, H, P),
        and the SSD's q = C, k = B, v = dt·xs and log decay, as `chunk_simple_gla` takes them."""
        B, T, H = dt.shape
        xs, b, c = F.silu(xbc).split([self.out.in_features, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, T, H)
        xs = xs.unflatten(-1, (H, -1))
        q, k = (t[:, :, None, :].expand(B, T, H, self.d_state) for t in (c, b))
        return xs, (q, k, xs * dt[..., None], -self.A_log.exp() * dt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, xbc, dt = self.split(x)
        xs, ssd = self.inputs(self.conv(xbc), dt)
        y, _ = run_op(ops.chunk_simple_gla, self.kernel, *ssd, scale=1.0, chunk_size=self.chunk_size)
        return self.output(y, xs, z)

    def prefill(self, x):
        z, xbc, dt = self.split(x)
        mixed, tail = self.conv.prefill(xbc)
        xs, ssd = self.inputs(mixed, dt)
        y, state = ops.chunk_simple_gla(*ssd, scale=1.0, output_final_state=True, chunk_size=self.chunk_size)
        return self.output(y, xs, z), {"conv": tail, "state": state}

    def step(self, x, state, pos):
        z, xbc, dt = self.split(x)
        mixed, tail = self.conv.step(xbc, state["conv"])
        xs, ssd = self.inputs(mixed, dt)
        y, s = ops.recurrent_simple_gla(*ssd, scale=1.0, initial_state=state["state"], output_final_state=True)
        return self.output(y, xs, z), {"conv": tail, "state": s}

    def output(self, y: torch.Tensor, xs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The skip D·x added, the gate, the norm and the output map."""
        return self.out(rms_norm((y + self.D[:, None] * xs).flatten(2) * F.silu(z)))

    def state_size(self):
        C = self.out.in_features
        return self.d_state * C + self.conv.state_size()

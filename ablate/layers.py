"""Building blocks shared by the backbone and the mixers: norm, rotary, FFNs, causal AFT sums."""

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS norm over the last axis without a learned weight (the seed model has none)."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


class Rotary(nn.Module):
    """Rotary position embedding for (B, H, T, d) tensors; tables are buffers, not parameters."""

    def __init__(self, head_dim: int, context: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(context, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(-2)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class SwiGLU(nn.Module):
    """FFN (u ⊙ silu(g)) W_out with [u, g] = x W_in: 3·C·F parameters."""

    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.w_in = nn.Linear(d_model, 2 * ffn_dim, bias=False)
        self.w_out = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, g = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(u * F.silu(g))


class GeluMLP(nn.Module):
    """The classic two-layer GELU MLP: 2·C·F parameters."""

    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.w_in = nn.Linear(d_model, ffn_dim, bias=False)
        self.w_out = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(F.gelu(self.w_in(x)))


FFNS = {"swiglu": SwiGLU, "gelu": GeluMLP}

_EPS = 1e-20


def causal_softmax_mean(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y_t = Σ_{t'≤t} exp(k_t') v_t' / Σ_{t'≤t} exp(k_t'), per channel, along dim 1 (time).

    Computed in log space with logcumsumexp, so neither large nor very different keys
    overflow or underflow. A log needs positive arguments, so v is split by sign into
    v⁺ + ε and v⁻ + ε; the ε (which keeps the logs finite) cancels in the difference.
    """
    log_den = torch.logcumsumexp(k, dim=1)
    pos = torch.logcumsumexp(k + torch.log(v.clamp_min(0) + _EPS), dim=1)
    neg = torch.logcumsumexp(k + torch.log((-v).clamp_min(0) + _EPS), dim=1)
    return torch.exp(pos - log_den) - torch.exp(neg - log_den)

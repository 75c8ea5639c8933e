"""retnet: multi-scale retention (Sun et al., 2023, arXiv:2307.08621), in its three equivalent forms.

Per head h with decay γ_h = 1 - 2^(-5-h), on rotary-rotated q and k (k scaled by 1/√d):
  parallel    Y = (Q Kᵀ ⊙ D) V,  D_{n,m} = γ^(n-m) for n ≥ m, else 0     O(T²) — training
  recurrent   S_n = γ S_{n-1} + k_nᵀ v_n,  y_n = q_n S_n                   O(T), a loop — decoding
  chunkwise   parallel inside chunks, the recurrent state between them     O(T·chunk) — long training
then a group norm per head (no learned weight), a swish gate and the output map.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ablate.mixers.registry import Mixer, Size, register
from ablate.nn.layers import Rotary


def decays(n_heads: int) -> torch.Tensor:
    return 1 - 2.0 ** (-5 - torch.arange(n_heads, dtype=torch.float64))


def _decay_matrix(log_gamma: torch.Tensor, T: int) -> torch.Tensor:
    """(H, T, T) with γ^(n-m) for n ≥ m and 0 above the diagonal."""
    lag = torch.arange(T, device=log_gamma.device)
    lag = lag[:, None] - lag[None, :]
    powers = torch.exp(lag.clamp_min(0) * log_gamma[:, None, None])
    return powers.masked_fill(lag < 0, 0.0)


def parallel(q, k, v, gamma):
    return (q @ k.transpose(-1, -2) * _decay_matrix(gamma.log(), q.size(-2)).to(q.dtype)) @ v


def recurrent(q, k, v, gamma):
    B, H, T, d = q.shape
    gamma = gamma.to(q.dtype)[:, None, None]
    state = q.new_zeros(B, H, d, v.size(-1))
    ys = []
    for n in range(T):
        state = gamma * state + k[:, :, n, :, None] * v[:, :, n, None, :]
        ys.append((q[:, :, n, None, :] @ state).squeeze(-2))
    return torch.stack(ys, dim=2)


def chunkwise(q, k, v, gamma, size: int):
    T = q.size(-2)
    pad = -T % size
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    log_gamma = gamma.log()
    inner = _decay_matrix(log_gamma, size).to(q.dtype)
    position = torch.arange(size, device=q.device)
    into = torch.exp((position + 1) * log_gamma[:, None]).to(q.dtype)[:, :, None]  # γ^(j+1): state → query j
    out_of = torch.exp((size - 1 - position) * log_gamma[:, None]).to(q.dtype)[:, :, None]  # γ^(size-1-j)
    across = torch.exp(size * log_gamma).to(q.dtype)[:, None, None]  # γ^size: one whole chunk
    state = q.new_zeros(*q.shape[:2], q.size(-1), v.size(-1))
    ys = []
    for start in range(0, T + pad, size):
        qc, kc, vc = (t[:, :, start : start + size] for t in (q, k, v))
        ys.append((qc @ kc.transpose(-1, -2) * inner) @ vc + (qc * into) @ state)
        state = across * state + (kc * out_of).transpose(-1, -2) @ vc
    return torch.cat(ys, dim=2)[:, :, :T]


@register("retnet")
class MultiScaleRetention(Mixer):
    """RetNet retention: per-head decays, rotary q/k, group norm and swish gate; parallel/chunkwise/recurrent.

    Decays γ_h = 1 − 2^(−5−h).
    """

    def __init__(
        self,
        cfg,
        layer_idx,
        *,
        form: Literal["parallel", "chunkwise", "recurrent"] = "chunkwise",
        chunk_size: Size = 64,
    ):
        super().__init__()
        self.n_heads, self.form, self.chunk_size = cfg.n_heads, form, chunk_size
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.gate = nn.Linear(cfg.d_model, cfg.qkv_dim, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.context)
        self.register_buffer("gamma", self.derived_buffers()["gamma"], persistent=False)

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        """The heads' decays, computed afresh: what a loader that restores no buffers sets them to."""
        return {"gamma": decays(self.n_heads)}

    cannot_decode = None

    def heads(self, x: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, H, T, d) for positions start, start + 1, …: q and k rotated, k scaled by 1/√d."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        return self.rotary(q, start), self.rotary(k, start) * k.size(-1) ** -0.5, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(x, self.retain(*self.heads(x)))

    def retain(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Retention over (B, H, T, d) heads in the layer's form."""
        if self.form == "parallel":
            return parallel(q, k, v, self.gamma)
        if self.form == "recurrent":
            return recurrent(q, k, v, self.gamma)
        return chunkwise(q, k, v, self.gamma, self.chunk_size)

    def prefill(self, x):
        """The output, and the recurrent form's state after x: S = Σ_m γ^(T−1−m) k_mᵀ v_m per head."""
        q, k, v = self.heads(x)
        ages = torch.arange(x.size(1) - 1, -1, -1, device=x.device, dtype=torch.float64)
        weights = torch.exp(ages * self.gamma.log()[:, None]).to(k.dtype)[:, :, None]  # (H, T, 1)
        return self.output(x, self.retain(q, k, v)), (k * weights).transpose(-1, -2) @ v

    def step(self, x, state, pos):
        q, k, v = self.heads(x, pos)
        state = self.gamma.to(q.dtype)[:, None, None] * state + k.transpose(-1, -2) @ v
        return self.output(x, q @ state), state

    def output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Group norm of the heads' (B, H, T, d) outputs, the swish gate and the output map."""
        y = F.layer_norm(y, (y.size(-1),))  # group norm: each head normalised on its own
        return self.out(F.silu(self.gate(x)) * y.transpose(1, 2).flatten(2))

    def state_size(self):
        C = self.out.in_features
        return C * (C // self.n_heads)  # one d×d state per head

"""Based's linear attention (Arora et al. 2024, arXiv:2402.18668): the softmax's exp(s) replaced
by its second-order Taylor polynomial 1 + s + s²/2, with s = scale · q·k, normalised.

    o_t = Σ_{s≤t} (1 + s_ts + s_ts²/2) v_s / Σ_{s≤t} (1 + s_ts + s_ts²/2)

Parallel: that sum as a T×T causal map. Recurrent: the same as linear attention on the feature
map φ(x) = [1, x, vec(x ⊗ x)/√2], since φ(scale·q)·φ(k) = 1 + s + s²/2 exactly; its state is
(1 + K + K²) × (V + 1) per head, the normaliser included.
"""

import math

import torch

from ablate.nn.ops.gla import recurrent_linear_attn


def taylor(s: torch.Tensor) -> torch.Tensor:
    return 1 + s + 0.5 * s * s


def parallel_based(q, k, v, scale=None):
    """q, k (B, T, H, K), v (B, T, H, V); returns (o, None) as fla's parallel_based does."""
    T = q.size(1)
    scale = q.size(-1) ** -0.5 if scale is None else scale
    scores = taylor(torch.einsum("bthk,bshk->bhts", q * scale, k))
    scores = scores * torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    o = torch.einsum("bhts,bshv->bthv", scores, v) / scores.sum(-1).transpose(1, 2)[..., None]
    return o, None


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = [1, x, vec(x ⊗ x)/√2] along the last axis."""
    square = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2)
    return torch.cat([torch.ones_like(x[..., :1]), x, square], dim=-1)


def recurrent_based(q, k, v, scale=None, initial_state=None, output_final_state=False):
    scale = q.size(-1) ** -0.5 if scale is None else scale
    return recurrent_linear_attn(
        feature_map(q * scale), feature_map(k), v, 1.0, initial_state, output_final_state, normalize=True
    )


def naive_based(q, k, v, scale: float | None = None) -> torch.Tensor:
    """The reference: o_t = Σ_{s≤t} w_ts v_s / Σ_{s≤t} w_ts with w = 1 + s + s²/2, s = scale · q_t·k_s,
    one sequence, head and position at a time."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    B, T, H, _ = q.shape
    out = q.new_zeros(B, T, H, v.shape[-1])
    for b in range(B):
        for h in range(H):
            for t in range(T):
                s = scale * k[b, : t + 1, h] @ q[b, t, h]
                weights = 1 + s + s * s / 2
                out[b, t, h] = weights @ v[b, : t + 1, h] / weights.sum()
    return out

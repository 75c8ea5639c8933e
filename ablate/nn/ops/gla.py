"""Linear attention with a decay: gated linear attention (per-channel decay, Yang et al. 2023,
arXiv:2312.06635), its per-head special case (Mamba-2's SSD core, Dao & Gu 2024,
arXiv:2405.21060) and plain linear attention (no decay, Katharopoulos et al. 2020,
arXiv:2006.16236).

Per head, with S a K×V state and g_t ≤ 0 a log decay (one per head, or one per key channel):

    S_t = exp(g_t) ⊙ S_{t-1} + k_tᵀ v_t        o_t = scale · q_t S_t

Chunked: inside a chunk of L steps, b_t = Σ g up to t (the decay from the chunk's start), so the
step s reaches t with exp(b_t − b_s) ≤ 1; the state enters at t with exp(b_t) and leaves the
chunk with exp(b_L − b_s). Every factor is a decay, never a growth, so long chunks stay finite.
"""

import torch
import torch.nn.functional as F

from ablate.nn.ops.reference import each_head


def _chunks(x: torch.Tensor, L: int) -> torch.Tensor:
    """(B, T, H, ...) → (B, H, N, L, ...), padded with zeros to N·L steps (a zero log decay and
    zero keys leave the state as it is)."""
    T = x.size(1)
    pad = -T % L
    x = x.movedim(1, 2)
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.unflatten(2, (-1, L))


def _unchunk(o: torch.Tensor, T: int) -> torch.Tensor:
    return o.flatten(2, 3)[:, :, :T].movedim(2, 1)


def _chunked(q, k, v, g, scale, initial_state, output_final_state, chunk_size, per_channel):
    B, T, H, K = q.shape
    L = min(chunk_size, T)
    q, k, v = (_chunks(t, L) for t in (q * scale, k, v))
    b = _chunks(g, L).cumsum(3)  # (B, H, N, L) or (B, H, N, L, K)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    if per_channel:
        lag = (b[..., :, None, :] - b[..., None, :, :]).masked_fill(~causal[..., None], float("-inf"))
        scores = torch.einsum("...tc,...sc,...tsc->...ts", q, k, lag.exp())
        last = b[..., -1:, :]
    else:
        lag = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf"))
        scores = q @ k.transpose(-1, -2) * lag.exp()
        b, last = b[..., None], b[..., -1:, None]
    intra = scores @ v
    q_in, k_out, across = q * b.exp(), k * (last - b).exp(), last.exp().transpose(-1, -2)  # across: (…, K, 1)
    state = q.new_zeros(B, H, K, v.size(-1)) if initial_state is None else initial_state.to(q.dtype)
    inter = []
    for n in range(q.size(2)):
        inter.append(q_in[:, :, n] @ state)
        state = across[:, :, n] * state + k_out[:, :, n].transpose(-1, -2) @ v[:, :, n]
    o = intra + torch.stack(inter, dim=2)
    return _unchunk(o, T), (state if output_final_state else None)


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, chunk_size=16):
    """Gated linear attention, g (B, T, H, K): a log decay per key channel."""
    scale = q.size(-1) ** -0.5 if scale is None else scale
    return _chunked(q, k, v, g, scale, initial_state, output_final_state, chunk_size, per_channel=True)


def chunk_simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, chunk_size=64):
    """Linear attention with a log decay per head, g (B, T, H): Mamba-2's SSD core."""
    scale = q.size(-1) ** -0.5 if scale is None else scale
    return _chunked(q, k, v, g, scale, initial_state, output_final_state, chunk_size, per_channel=False)


def chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True, chunk_size=64):
    """Causal linear attention. normalize: o_t = q_t S_t / (q_t · Σ_{s≤t} k_s); its state then
    carries that normaliser Σ k as one more value column, (B, H, K, V + 1)."""
    g = q.new_zeros(q.shape[:3])

    def run(values):
        return chunk_simple_gla(q, k, values, g, scale, initial_state, output_final_state, chunk_size)

    return _normalised(run, v) if normalize else run(v)


def _normalised(run, v):
    """`run` (linear attention on the given values) divided by its normaliser: the values carry
    one more column of ones, so that column of the output is q_t · Σ_{s≤t} k_s."""
    o, state = run(torch.cat([v, v.new_ones(*v.shape[:-1], 1)], -1))
    return o[..., :-1] / o[..., -1:], state


def _recurrent(q, k, v, decay, scale, initial_state, output_final_state):
    """The recurrence itself, one step at a time; decay (B, T, H, K, 1) or broadcastable."""
    B, T, H, K = q.shape
    state = q.new_zeros(B, H, K, v.size(-1)) if initial_state is None else initial_state.to(q.dtype)
    out = []
    for t in range(T):
        state = decay[:, t] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append((q[:, t, :, None, :] * scale) @ state)
    return torch.cat(out, dim=2).movedim(2, 1), (state if output_final_state else None)


def recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    scale = q.size(-1) ** -0.5 if scale is None else scale
    return _recurrent(q, k, v, g.exp()[..., None], scale, initial_state, output_final_state)


def recurrent_simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    scale = q.size(-1) ** -0.5 if scale is None else scale
    return _recurrent(q, k, v, g.exp()[..., None, None], scale, initial_state, output_final_state)


def recurrent_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True):
    scale = q.size(-1) ** -0.5 if scale is None else scale
    g = q.new_zeros(q.shape[:3])

    def run(values):
        return recurrent_simple_gla(q, k, values, g, scale, initial_state, output_final_state)

    return _normalised(run, v) if normalize else run(v)


def naive_gla(q, k, v, g, scale: float | None = None, initial_state=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: S_t = exp(g_t) ⊙ S_{t-1} + k_tᵀ v_t, o_t = scale · q_t S_t, token by token,
    with g per key channel (B, T, H, K)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def step(S, q, k, v, g):
        S = g.exp()[:, None] * S + torch.outer(k, v)
        return S, scale * q @ S

    return each_head(step, q, k, v, g, initial_state=initial_state)


def naive_simple_gla(q, k, v, g, scale: float | None = None, initial_state=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference with one log decay per head (B, T, H)."""
    return naive_gla(q, k, v, g[..., None].expand_as(k), scale, initial_state)


def naive_linear_attn(q, k, v, scale: float | None = None, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference of linear attention: normalised, o_t = q_t Σ kᵀv / q_t Σ kᵀ (the state holds
    Σ kᵀ as an extra column, and `scale` cancels); else gla with no decay."""
    if not normalize:
        return naive_simple_gla(q, k, v, torch.zeros(q.shape[:3], dtype=q.dtype), scale)

    def step(S, q, k, v):
        S = S + torch.outer(k, torch.cat([v, v.new_ones(1)]))
        return S, (q @ S[:, :-1]) / (q @ S[:, -1])

    return each_head(step, q, k, v, width=v.shape[-1] + 1)

"""The delta rule (Schlag et al. 2021, arXiv:2102.11174; chunked as Yang et al. 2024,
arXiv:2406.06484) and its gated form (Gated DeltaNet, Yang et al. 2024, arXiv:2412.06464).

Per head, with S a K×V state, β_t in (0, 1) a write strength and g_t ≤ 0 a log decay per head:

    S' = exp(g_t) S_{t-1}        S_t = S' + β_t k_tᵀ (v_t − k_t S')        o_t = scale · q_t S_t

that is S_t = exp(g_t)(I − β_t k_tᵀ k_t) S_{t-1} + β_t k_tᵀ v_t (g = 0: the delta rule). Chunked: inside a chunk of L steps starting from S_0, with
γ_t = exp(Σ g up to t), the state is S_t = γ_t S_0 + Σ_{s≤t} (γ_t/γ_s) k_sᵀ u_s, where the
pseudo-values u solve the unit lower-triangular system

    u_t + β_t Σ_{s<t} (γ_t/γ_s)(k_t·k_s) u_s = β_t (v_t − γ_t k_t S_0)

(the WY form: one triangular solve per chunk instead of L sequential updates). Every ratio
γ_t/γ_s with s ≤ t is a decay, at most 1.
"""

import torch

from ablate.nn.ops.gla import _chunks, _unchunk
from ablate.nn.ops.reference import each_head


def solve_unit_lower(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """The unit lower-triangular solve, in float32 at least: torch has no triangular solve in half
    precision (a model cast to bf16 reaches it with bf16 tensors), and the result goes back to
    the inputs' dtype."""
    wide = torch.promote_types(rhs.dtype, torch.float32)
    u = torch.linalg.solve_triangular(system.to(wide), rhs.to(wide), upper=False, unitriangular=True)
    return u.to(rhs.dtype)


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, chunk_size=64):
    """g (B, T, H): log decay per head; beta (B, T, H)."""
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    L = min(chunk_size, T)
    q, k, v = (_chunks(t, L) for t in (q * scale, k, v))
    b, beta = _chunks(g, L).cumsum(3), _chunks(beta, L)[..., None]  # (B, H, N, L), (B, H, N, L, 1)
    lower = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    lag = (b[..., :, None] - b[..., None, :]).masked_fill(~lower, float("-inf")).exp()  # γ_t/γ_s, s ≤ t
    strict = beta * (k @ k.transpose(-1, -2) * lag).tril(-1)
    system = strict + torch.eye(L, dtype=q.dtype, device=q.device)
    attend = q @ k.transpose(-1, -2) * lag  # (γ_t/γ_s) q_t·k_s, s ≤ t
    gamma, last = b.exp()[..., None], b[..., -1:, None]
    k_out, across = k * (last - b[..., None]).exp(), last.exp()[..., 0]  # (…, L, K), (…, 1)
    state = q.new_zeros(B, H, K, v.size(-1)) if initial_state is None else initial_state.to(q.dtype)
    out = []
    for n in range(q.size(2)):
        rhs = beta[:, :, n] * (v[:, :, n] - gamma[:, :, n] * (k[:, :, n] @ state))
        u = solve_unit_lower(system[:, :, n], rhs)
        out.append(gamma[:, :, n] * (q[:, :, n] @ state) + attend[:, :, n] @ u)
        state = across[:, :, n, :, None] * state + k_out[:, :, n].transpose(-1, -2) @ u
    return _unchunk(torch.stack(out, dim=2), T), (state if output_final_state else None)


def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, chunk_size=64):
    """beta (B, T, H)."""
    g = q.new_zeros(q.shape[:3])
    return chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size)


def recurrent_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    state = q.new_zeros(B, H, K, v.size(-1)) if initial_state is None else initial_state.to(q.dtype)
    out = []
    for t in range(T):
        kt, decay, bt = k[:, t, :, None, :], g[:, t].exp()[..., None, None], beta[:, t, :, None, None]
        state = decay * state
        error = v[:, t, :, None, :] - kt @ state  # (B, H, 1, V): what the state says about k_t, corrected
        state = state + bt * kt.transpose(-1, -2) @ error
        out.append((q[:, t, :, None, :] * scale) @ state)
    return torch.cat(out, dim=2).movedim(2, 1), (state if output_final_state else None)


def recurrent_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False):
    g = q.new_zeros(q.shape[:3])
    return recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state)


def naive_gated_delta_rule(q, k, v, g, beta, scale: float | None = None, initial_state=None):
    """The reference: S' = exp(g_t) S_{t-1}, S_t = S' + β_t k_tᵀ (v_t − k_t S'), o_t = scale · q_t S_t,
    token by token."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def step(S, q, k, v, g, beta):
        S = g.exp() * S
        S = S + beta * torch.outer(k, v - k @ S)
        return S, scale * q @ S

    return each_head(step, q, k, v, g, beta, initial_state=initial_state)


def naive_delta_rule(q, k, v, beta, scale: float | None = None, initial_state=None):
    """The reference of the ungated rule: g = 0."""
    return naive_gated_delta_rule(q, k, v, torch.zeros_like(beta), beta, scale, initial_state)

"""HGRN's recurrence (Qin, Yang and Zhong 2023, "Hierarchically Gated Recurrent Neural Network for
Sequence Modeling", arXiv:2311.04823, eq. 3 in its real form): per channel, a gated linear
recurrence with the forget gate's log g_t ≤ 0,

    h_t = exp(g_t) ⊙ h_{t-1} + x_t

on x and g of shape (B, T, D), with an initial and final state (B, D), in fla's calling
convention (`fla.ops.chunk_hgrn`, `fused_recurrent_hgrn`).

Chunked: inside a chunk of L steps, b_t = Σ g up to t, so x_s reaches h_t with exp(b_t − b_s) ≤ 1
and the state entering the chunk with exp(b_t): every factor a decay, so a gate near 0 (a lower
layer's, whose bound is 0) stays finite.
"""

import torch
import torch.nn.functional as F


def chunk_hgrn(x, g, initial_state=None, output_final_state=False, chunk_size=16):
    """h for every step (B, T, D), and the final state (B, D) where asked."""
    B, T, D = x.shape
    L = min(chunk_size, T)
    pad = -T % L
    x, g = (F.pad(t, (0, 0, 0, pad)).unflatten(1, (-1, L)) for t in (x, g))  # (B, N, L, D); g = 0: no decay
    b = g.cumsum(2)
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    reach = (b[:, :, :, None] - b[:, :, None]).masked_fill(~causal[:, :, None], float("-inf")).exp()  # (B,N,t,s,D)
    within = (reach * x[:, :, None]).sum(3)
    h = x.new_zeros(B, D) if initial_state is None else initial_state.to(x.dtype)
    out = []
    for n in range(x.size(1)):
        o = within[:, n] + b[:, n].exp() * h[:, None]
        h = o[:, -1]
        out.append(o)
    return torch.cat(out, 1)[:, :T], (h if output_final_state else None)


def recurrent_hgrn(x, g, initial_state=None, output_final_state=False):
    """The recurrence one step at a time (decoding)."""
    h = x.new_zeros(x.size(0), x.size(2)) if initial_state is None else initial_state.to(x.dtype)
    out = []
    for t in range(x.size(1)):
        h = g[:, t].exp() * h + x[:, t]
        out.append(h)
    return torch.stack(out, 1), (h if output_final_state else None)


def naive_hgrn(x, g, initial_state=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: h_t = exp(g_t) ⊙ h_{t-1} + x_t, one sequence and token at a time."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        h = x.new_zeros(x.shape[-1]) if initial_state is None else initial_state[b].clone()
        for t in range(x.shape[1]):
            h = g[b, t].exp() * h + x[b, t]
            out[b, t] = h
    return out, out[:, -1]

"""The loop every op's naive reference runs (`naive_*`, beside each op): one sequence, one head,
one token at a time, so that a reference is its paper's update rule written out and nothing more.
They are the ground truth the chunked and recurrent forms are tested against, in float64."""

from collections.abc import Callable

import torch


def each_head(
    step: Callable,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *per_step: torch.Tensor,
    initial_state=None,
    width=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`step(S, q_t, k_t, v_t, *x_t) -> (S, o_t)` run over every sequence and head of q, k (B, T, H, K)
    and v (B, T, H, V), token by token from S = initial_state[b, h] (zeros, K × `width`, V by default, where none); the
    outputs (B, T, H, V) and the final states (B, H, ...)."""
    B, T, H, K = q.shape
    out = q.new_zeros(B, T, H, v.shape[-1])
    final = []
    for b in range(B):
        for h in range(H):
            S = q.new_zeros(K, width or v.shape[-1]) if initial_state is None else initial_state[b, h].clone()
            for t in range(T):
                S, out[b, t, h] = step(S, q[b, t, h], k[b, t, h], v[b, t, h], *(x[b, t, h] for x in per_step))
            final.append(S)
    return out, torch.stack(final).view(B, H, *final[0].shape)

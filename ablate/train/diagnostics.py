"""Why a variant fails, per block: the effective rank of its token representations, the entropy
of its attention, and the size of its gradients.

Effective rank is the mechanism behind "attention-only stacks degrade": without FFNs (and
residuals that keep them apart) token representations collapse towards a low-dimensional
subspace with depth.
"""

import math

import torch

from ablate.core.schema import Metric
from ablate.nn.layers import rms_norm
from ablate.train import sharded
from ablate.train.distributed import Group


def effective_rank(h: torch.Tensor) -> float:
    """Roy & Vetterli (2007): exp of the Shannon entropy of the normalized singular values of
    the centered (N, d) matrix h. d for N ≥ d rows spread evenly over d orthogonal directions,
    1 for rows that all lie on one line."""
    h = h.detach().double()
    s = torch.linalg.svdvals(h - h.mean(dim=0))
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def attention_entropy(probs: torch.Tensor) -> float:
    """Mean entropy (nats) of the attention rows of a (B, H, T, T) map: log(keys seen) when
    a head attends evenly, 0 when each query looks at one key."""
    p = probs.detach().double()
    return -(p * p.clamp_min(1e-300).log()).sum(dim=-1).mean().item()


@torch.no_grad()
def per_block(model, idx: torch.Tensor) -> dict[str, float]:
    """On one batch: `rank/blockI`, the effective rank of the (B·T, d_model) representations
    after block I, and `attn_entropy/blockI` for blocks whose mixer has an attention map; both
    on the residual stream the model's own forward walk hands each block."""
    out = {}

    def observe(i: int, block, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        mixer = block.mixer
        probs = None if mixer.adds_residual else mixer.attention_probs(rms_norm(x_in))
        if probs is not None:
            out[f"{Metric.ATTN_ENTROPY}{i}"] = attention_entropy(probs)
        out[f"{Metric.RANK}{i}"] = effective_rank(x_out.flatten(0, 1).float())

    model.hidden(idx, observe)
    return out


def grad_norms(model, shards: Group | None = None) -> torch.Tensor:
    """The gradient's norm per block, a tensor on the device (no host sync): read it only where
    the loss is read anyway. Where the model is sharded over a group (`shards`), each rank holds a
    part of every gradient, and the parts' squares are summed over the ranks."""
    grads = [[p.grad if shards is None else sharded.local(p.grad) for p in b.parameters()] for b in model.blocks]
    squares = torch.stack([torch.stack(torch._foreach_norm(g)).square().sum() for g in grads])
    return (squares if shards is None else shards.sum(squares)).sqrt()

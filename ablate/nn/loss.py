"""The language-model loss: cross-entropy of the tied head's logits, fused so that they never exist whole."""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # a target that is not scored (F.cross_entropy's default ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of h Wᵀ, a block of rows at a time, its gradient formed on the way.

    The (N, V) logits never exist whole, and the softmax of each block is turned into the
    gradient while it is still in cache: one pass where log_softmax, nll_loss and their
    backward would make four over the full logits.
    """

    @staticmethod
    def forward(ctx, h, weight, target, rows):
        scored = target != IGNORE_INDEX
        n = scored.sum().clamp_min(1)  # a tensor: no host sync
        grad_h, grad_w = torch.empty_like(h), torch.zeros_like(weight)
        total = torch.zeros((), dtype=_at_least_float32(h.dtype), device=h.device)
        for start in range(0, h.size(0), rows):
            hb, sb = h[start : start + rows], scored[start : start + rows]
            tb = target[start : start + rows].clamp_min(0)  # ignored rows pick any class, then weigh 0
            logits = hb @ weight.t()
            logits = logits.to(_at_least_float32(logits.dtype))
            lse = torch.logsumexp(logits, dim=-1)
            total = total + ((lse - logits.gather(1, tb[:, None]).squeeze(1)) * sb).sum()
            g = torch.exp(logits.sub_(lse[:, None]))  # the softmax, in place of the logits
            g[torch.arange(len(tb), device=g.device), tb] -= 1.0
            g = g.mul_((sb / n)[:, None]).to(h.dtype)
            grad_h[start : start + rows] = g @ weight
            grad_w += g.t() @ hb
        ctx.save_for_backward(grad_h, grad_w)
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """bf16/fp16 logits (under autocast) are summed in float32; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(h @ weight.T, target) for h (N, C), weight (V, C), with targets equal to
    IGNORE_INDEX not scored: fused when training, plain when no gradient is needed (where
    forming one would be wasted work)."""
    if not torch.is_grad_enabled() or not (h.requires_grad or weight.requires_grad):
        logits = F.linear(h, weight)
        return F.cross_entropy(logits.to(_at_least_float32(logits.dtype)), target, ignore_index=IGNORE_INDEX)
    rows = max(1, (1 << 20) // weight.size(0))  # a block of logits of about 4 MB
    return _LinearCrossEntropy.apply(h, weight, target, rows)

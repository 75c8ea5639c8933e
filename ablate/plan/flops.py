"""The one FLOP counter: what the budget equalises and what the bench divides by its time; and
the bytes a training step moves, which the bench sets against the memory bandwidth."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from ablate.model import LanguageModel


def flops_per_token(model: LanguageModel, training: bool = False) -> float:
    """FLOPs per token over one full context: torch's counter over the matrix products (on the
    meta device attention is plain matmuls, counted dense), plus each mixer's declared
    element-wise work. Forward only by default; `training` adds the backward pass, whose
    products the counter sees and whose element-wise work is taken as twice the forward's."""
    T = model.cfg.context
    idx = torch.zeros(1, T, dtype=torch.long, device=model.embed.weight.device)
    with FlopCounterMode(display=False) as counter:
        if training:
            model.loss(idx, idx).backward()
        else:
            with torch.no_grad():
                model(idx)
    declared = sum(block.mixer.elementwise_flops(T) for block in model.blocks)
    return counter.get_total_flops() / T + (3 if training else 1) * declared


NO_TRAFFIC = {torch.ops.aten._unsafe_view, torch.ops.aten.lift_fresh, torch.ops.aten.detach}  # views in all but name


class ByteCounter(TorchDispatchMode):
    """Sums the bytes of every tensor that each operation reads and writes (views move none)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.overloadpacket not in NO_TRAFFIC:
            tensors = tree_flatten((args, kwargs, out))[0]
            self.total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        return out


def bytes_per_token(model: LanguageModel, batch_size: int) -> float:
    """Bytes one training step moves to and from memory per token, if each operation reads its
    inputs and writes its outputs once and nothing stays in cache between operations: the
    traffic of a step run operation by operation, as eager PyTorch runs it. Counted on the
    model's device (meta: nothing runs) over a batch of full contexts, so weights count once per
    batch. Attention is counted as the meta device computes it, unfused (the CPU's fused kernel
    moves less); the optimizer's update is left out."""
    T = model.cfg.context
    idx = torch.zeros(batch_size, T, dtype=torch.long, device=model.embed.weight.device)
    with ByteCounter() as counter:
        model.loss(idx, idx).backward()
    return counter.total / (batch_size * T)

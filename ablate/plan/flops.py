"""The one FLOP counter: what the budget equalises and what the bench divides by its time; and
the bytes a training step moves, which the bench sets against the memory bandwidth."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from ablate.model import LanguageModel

SCANS = ("cumsum", "cumprod", "cummax", "logcumsumexp", "_softmax", "_log_softmax", "logsumexp")


class ElementwiseCount(TorchDispatchMode):
    """The element-wise work of a model's mixers that torch's FLOP counter does not see: the
    elements each pointwise op writes, and the elements each reduction, scan or softmax reads,
    counted only while a mixer's forward runs (the rest of the backbone is the same for every
    variant of a width)."""

    def __init__(self, model: LanguageModel):
        super().__init__()
        self.total, self.inside = 0, 0
        self.hooks = [
            hook
            for block in model.blocks
            for hook in (
                block.mixer.register_forward_pre_hook(lambda *_: self._enter(1)),
                block.mixer.register_forward_hook(lambda *_: self._enter(-1)),
            )
        ]

    def _enter(self, step: int) -> None:
        self.inside += step

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.inside:
            return out
        if torch.Tag.pointwise in func.tags:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            self.total += sum(o.numel() for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point())
        elif torch.Tag.reduction in func.tags or any(scan in func.__name__ for scan in SCANS):
            self.total += args[0].numel()
        return out


def flops_per_token(model: LanguageModel, training: bool = False) -> float:
    """FLOPs per token over one full context, counted as the model runs (on the meta device where
    it is built there): torch's counter over the matrix products (on the meta device attention is
    plain matmuls, counted dense), plus the mixers' element-wise work (`ElementwiseCount`).
    Forward only by default; `training` adds the backward pass, whose products the counter sees
    and whose element-wise work is taken as twice the forward's."""
    T = model.cfg.context
    idx = torch.zeros(1, T, dtype=torch.long, device=model.embed.weight.device)
    with FlopCounterMode(display=False) as counter, ElementwiseCount(model) as elementwise:
        if training:
            model.loss(idx, idx).backward()
        else:
            with torch.no_grad():
                model(idx)
    return counter.get_total_flops() / T + (3 if training else 1) * elementwise.total / T


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

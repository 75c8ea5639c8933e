"""The one FLOP counter: what the budget equalises and what the bench divides by its time."""

import torch
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

"""The evaluation every model gets, the same in training and in `ablate eval`: val loss and val
accuracy over a fixed set of batches, and, for a model that leaks, its honest prefix loss."""

import torch
import torch.nn.functional as F

from ablate.core.schema import Metric
from ablate.inference import audit
from ablate.nn.devices import autocast
from ablate.nn.loss import IGNORE_INDEX as IGNORE
from ablate.train.distributed import ALONE, Group


@torch.no_grad()
def val_metrics(model, batches: list, forward=None, group: Group = ALONE) -> dict[str, float]:
    """val_loss and val_accuracy (the share of scored positions whose most likely token is the
    target) over the batches, on the model's device; positions with target IGNORE are not
    scored. `forward`: the model as it runs (compiled), if not the model itself. In a group,
    each rank scores its rows of every batch and the sums are added up."""
    device, forward = model.embed.weight.device, model if forward is None else forward
    was_training = model.training
    model.eval()
    loss = correct = count = 0  # sums, on the device until the end
    for x, y in batches:
        x, y = group.shard(x).to(device), group.shard(y).to(device)
        with autocast(device):
            logits = forward(x).float()
        scored = y != IGNORE
        loss = loss + F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")
        correct = correct + ((logits.argmax(-1) == y) & scored).sum()
        count = count + scored.sum()
    model.train(was_training)
    sums = torch.tensor([float(loss), float(correct), float(count)], dtype=torch.float64, device=device)
    loss, correct, count = group.sum(sums).tolist()
    return {Metric.VAL_LOSS: loss / count, Metric.VAL_ACCURACY: correct / count}


def prefix_losses(model, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """audit.prefix_losses on one batch, under the device's autocast."""
    with autocast(model.embed.weight.device):
        return audit.prefix_losses(model, *batch)

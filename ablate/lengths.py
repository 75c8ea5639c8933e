"""Loss past the training length: the model scored on validation windows longer than the context
it trained at, as length-generalisation papers plot it (ALiBi's "train short, test longer").

Each length T gives `val_loss_at/T` (MLflow's names allow no @) and the loss over each quarter
of the positions (`val_loss_at/T/positions_A-B`), so that a curve shows where a model breaks. The windows are scored
by the model's forward over T tokens (the same numbers decoding from its state gives, by the
mixer contract), a batch holding as many tokens as a training batch. Rotary tables grow as far
as asked; a learned table (positions, AFT's pair biases) ends where it ends, and the lengths past
it are not measured.
"""

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from ablate.data.corpus import val_batches
from ablate.errors import AblateError
from ablate.model import LanguageModel
from ablate.tracking.schema import Metric
from ablate.train.evaluation import autocast

BUCKETS = 4  # position ranges per length
METHOD = "forward over windows of T tokens"


def val_loss_at(length: int) -> str:
    return Metric.VAL_LOSS_AT + str(length)


def reach(model: LanguageModel, lengths: tuple[int, ...]) -> tuple[list[int], str | None]:
    """The lengths the model can be scored at, and why it stops short of the others (None if it does not)."""
    if not model.causal:
        raise AblateError(f"{model.cfg.mixer} is not causal here: its loss at any length reads the tokens it predicts")
    limit = model.decode_limit()
    if limit is None:
        return list(lengths), None
    kept = [n for n in lengths if n <= limit[0]]
    return kept, None if len(kept) == len(lengths) else f"{limit[1]} ends at position {limit[0]}"


@torch.no_grad()
def losses(model: LanguageModel, val: np.ndarray, lengths: list[int], batch_tokens: int, batches: int) -> dict:
    """val_loss_at/T and its position ranges for each length T, over `batches` fixed windows of
    batch_tokens // T sequences (at least one)."""
    device, was_training = model.embed.weight.device, model.training
    model.eval()
    out = {}
    for length in lengths:
        if val.size <= length + 1:
            raise AblateError(f"the val split has {val.size:,} tokens, too few for windows of {length}")
        per_position = torch.zeros(length, dtype=torch.float64)
        windows = val_batches(val, length, max(1, batch_tokens // length), batches)
        for x, y in windows:
            with autocast(device):
                logits = model(x.to(device)).float()
            loss = F.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none")  # (B, T)
            per_position += loss.sum(0).double().cpu()
        per_position /= sum(x.size(0) for x, _ in windows)
        out[val_loss_at(length)] = float(per_position.mean())
        edges = np.linspace(0, length, BUCKETS + 1).astype(int)
        for a, b in itertools.pairwise(edges.tolist()):
            out[f"{val_loss_at(length)}/positions_{a}-{b - 1}"] = float(per_position[a:b].mean())
    model.train(was_training)
    return out


def print_table(metrics: dict[str, float], lengths: list[int], context: int, stopped: str | None) -> None:
    """One line per length: its loss, and its loss over each quarter of the positions."""
    for length in lengths:
        name = val_loss_at(length)
        parts = [f"{k.split('/positions_')[1]}: {v:.4f}" for k, v in metrics.items() if k.startswith(name + "/")]
        mark = " (the training length)" if length == context else ""
        print(f"{name} {metrics[name]:.4f}{mark}   by position {'  '.join(parts)}")
    if stopped:
        print(f"longer lengths: n/a ({stopped})")

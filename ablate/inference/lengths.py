"""Past the training length: the model scored on validation windows longer than the context it
trained at, as length-generalisation papers plot it (ALiBi's "train short, test longer"), and
on a synthetic task's val examples drawn at longer lengths (`task_scores`: passkey, niah, ...).

Each length T gives `val_loss_at/T` (MLflow's names allow no @) and the loss over each quarter
of the positions (`val_loss_at/T/positions_A-B`), so that a curve shows where a model breaks.
Every length scores the same val tokens (`span`), cut into consecutive windows of T, as ALiBi's
paper evaluates: a change with length is the model's, not the text's. The windows are scored
by the model's forward over T tokens (the same numbers decoding from its state gives, by the
mixer contract), a batch holding as many tokens as a training batch. Rotary tables grow as far
as asked; a learned table (positions, AFT's pair biases) ends where it ends, and the lengths past
it are not measured.
"""

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from ablate.core.errors import AblateError
from ablate.core.schema import Metric
from ablate.data import tasks
from ablate.data.tasks import TaskData
from ablate.model import LanguageModel
from ablate.nn.devices import autocast
from ablate.nn.loss import IGNORE_INDEX as IGNORE

BUCKETS = 4  # position ranges per length
METHOD = "forward over consecutive windows of T tokens"  # of the same val text, or of a task's examples drawn at T


def val_loss_at(length: int) -> str:
    return Metric.VAL_LOSS_AT + str(length)


def val_exact_at(length: int) -> str:
    return Metric.VAL_EXACT_AT + str(length)


def depth_name(length: int, depth: float) -> str:
    """The exact-match metric of the val examples whose needle is at `depth` (0–1), as a percent."""
    return f"{val_exact_at(length)}/depth_{round(100 * depth)}"


def reach(model: LanguageModel, lengths: tuple[int, ...]) -> tuple[list[int], str | None]:
    """The lengths the model can be scored at, and why it stops short of the others (None if it does not)."""
    if not model.causal:
        raise AblateError(f"{model.cfg.mixer} is not causal here: its loss at any length reads the tokens it predicts")
    limit = model.decode_limit()
    if limit is None:
        return list(lengths), None
    kept = [n for n in lengths if n <= limit[0]]
    return kept, None if len(kept) == len(lengths) else f"{limit[1]} ends at position {limit[0]}"


def span(val_size: int, lengths: list[int], batch_tokens: int, batches: int) -> int:
    """How many val tokens every length scores: batches × batch_tokens, cut to a whole number of
    windows of the longest length (at least one), so that each length scores the same tokens."""
    longest = max(lengths)
    if val_size <= longest:
        raise AblateError(f"the val split has {val_size:,} tokens, too few for windows of {longest}")
    return max(1, min(batches * batch_tokens, val_size - 1) // longest) * longest


@torch.no_grad()
def losses(model: LanguageModel, val: np.ndarray, lengths: list[int], batch_tokens: int, batches: int) -> dict:
    """val_loss_at/T and its position ranges for each length T, over the same first `span` val
    tokens at every length, cut into consecutive windows of T (batch_tokens // T to a batch)."""
    device, was_training = model.embed.weight.device, model.training
    model.eval()
    out, size = {}, span(val.size, lengths, batch_tokens, batches)
    tokens = torch.from_numpy(np.asarray(val[: size + 1], dtype=np.int64))
    for length in lengths:
        x, y = tokens[:-1].view(-1, length), tokens[1:].view(-1, length)
        per_position = torch.zeros(length, dtype=torch.float64)
        rows = max(1, batch_tokens // length)
        for i in range(0, len(x), rows):
            with autocast(device):
                logits = model(x[i : i + rows].to(device)).float()
            loss = F.cross_entropy(logits.transpose(1, 2), y[i : i + rows].to(device), reduction="none")  # (B, T)
            per_position += loss.sum(0).double().cpu()
        per_position /= len(x)
        out[val_loss_at(length)] = float(per_position.mean())
        edges = np.linspace(0, length, BUCKETS + 1).astype(int)
        for a, b in itertools.pairwise(edges.tolist()):
            out[f"{val_loss_at(length)}/positions_{a}-{b - 1}"] = float(per_position[a:b].mean())
    model.train(was_training)
    return out


@torch.no_grad()
def task_scores(model: LanguageModel, data: TaskData, lengths: list[int], batch_tokens: int) -> dict:
    """At each length T, the task's val examples drawn at T: val_accuracy_at/T (answer tokens
    right), val_exact_at/T (examples whose every answer token is right) and, for a needle task,
    val_exact_at/T/depth_P for each depth, forward in batches of batch_tokens // T examples."""
    device, was_training = model.embed.weight.device, model.training
    model.eval()
    out = {}
    for length in lengths:
        x, y = data.val_examples(length)
        size = max(1, batch_tokens // length)
        right = []
        for i in range(0, len(x), size):
            xb, yb = x[i : i + size].to(device), y[i : i + size].to(device)
            with autocast(device):
                guess = model(xb).argmax(-1)
            right.append(((guess == yb) | (yb == IGNORE)).cpu())
        right, scored = torch.cat(right), y != IGNORE
        exact = right.all(dim=1)
        out[Metric.VAL_ACCURACY_AT + str(length)] = float(right[scored].float().mean())
        out[val_exact_at(length)] = float(exact.float().mean())
        if tasks.TASKS[data.cfg.task].deep:
            depths = tasks.depths_of(data.cfg, len(x))
            for depth in sorted(set(data.cfg.depths)):
                out[depth_name(length, depth)] = float(exact[torch.from_numpy(depths == depth)].float().mean())
    model.train(was_training)
    return out


def scores(model: LanguageModel, data, lengths: tuple[int, ...], batch_tokens: int, batches: int):
    """The model at each length it can reach: a task's scores (`task_scores`) or a corpus's
    losses (`losses`). Returns the metrics, the lengths scored and why the rest were not (or None)."""
    kept, stopped = reach(model, lengths)
    if isinstance(data, TaskData):
        return task_scores(model, data, kept, batch_tokens), kept, stopped
    return losses(model, data.val, kept, batch_tokens, batches), kept, stopped


def print_table(metrics: dict[str, float], lengths: list[int], context: int, stopped: str | None) -> None:
    """One line per length: its metrics, then those by position range or needle depth."""
    for length in lengths:
        ours = {k: v for k, v in metrics.items() if k.split("/")[1] == str(length)}
        whole = "  ".join(f"{k} {v:.4f}" for k, v in ours.items() if k.count("/") == 1)
        parts = "  ".join(f"{k.split('/')[2]}: {v:.4f}" for k, v in ours.items() if k.count("/") == 2)
        mark = " (the training length)" if length == context else ""
        print(f"{whole}{mark}" + (f"   by {parts}" if parts else ""))
    if stopped:
        print(f"longer lengths: n/a ({stopped})")

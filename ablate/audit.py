"""The causality audit: perturb what a position must not see and measure how far its logits move.

A model is causal when the logits at (i, t) are unchanged by any token at (i, t' > t) or
by any token of another sequence j ≠ i. The audit changes exactly those tokens and
reports the largest logit change it saw; above TOLERANCE the model leaks.
"""

from typing import Any

import torch
import torch.nn.functional as F

from ablate.errors import AblateError
from ablate.model import LanguageModel, build_model

TOLERANCE = 1e-5  # float32, as the spec fixes it
PREFIX_POSITIONS = 16  # per window: the positions prefix_val_loss predicts


def max_leak(model_dict: dict[str, Any], batch: int = 3, seed: int = 0) -> float:
    """Largest logit change at positions that must not see the perturbed tokens, for a model
    freshly built (from `seed`) from its dict."""
    torch.manual_seed(seed)
    return model_leak(build_model(model_dict), batch, seed)


@torch.no_grad()
def model_leak(model: LanguageModel, batch: int = 3, seed: int = 0) -> float:
    """Largest logit change at positions that must not see the perturbed tokens, for this model
    (a trained or imported one as it is)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    vocab, T = model.cfg.vocab_size, model.cfg.context
    device = model.embed.weight.device
    idx = torch.randint(0, vocab, (batch, T), generator=g).to(device)
    logits = model(idx)
    leak = 0.0
    for t in sorted({0, T // 2, max(T - 2, 0)}):  # everything after t changes in sequence 0
        changed = idx.clone()
        changed[0, t + 1 :] = torch.randint(0, vocab, (T - t - 1,), generator=g).to(device)
        leak = max(leak, (model(changed)[0, : t + 1] - logits[0, : t + 1]).abs().max().item())
    others = idx.clone()  # every other sequence of the batch changes
    others[1:] = torch.randint(0, vocab, (batch - 1, T), generator=g).to(device)
    return max(leak, (model(others)[0] - logits[0]).abs().max().item())


def is_causal(leak: float) -> bool:
    return leak <= TOLERANCE


def leaking(leaks: dict[str, float]) -> list[str]:
    """The names whose leak is above the tolerance."""
    return [name for name, leak in leaks.items() if not is_causal(leak)]


def audit_study(study) -> dict[str, float]:
    """Each variant's largest leak (the seed does not change the architecture)."""
    return {t.variant: max_leak(t.model) for t in {t.variant: t for t in study.trials}.values()}


def refuse_leaks(study, leaks: dict[str, float]) -> None:
    """A leaking variant's loss is no honest next-token loss: train it only when the study allows it."""
    leaky = leaking(leaks)
    if leaky and not study.config.allow_leaky:
        variant = leaky[0]
        raise AblateError(
            f"{study.path}: variant {variant!r} is not causal (a logit moved by {leaks[variant]:.2e} when only tokens it must "
            "not see changed); set allow_leaky: true to train it anyway, tagged ablate.causal=false"
        )


@torch.no_grad()
def prefix_losses(model: LanguageModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The honest loss of a leaking model, and the teacher-forced loss at the same positions.

    Each chosen position t of each window of x is predicted by a forward pass over tokens
    0..t of that window alone (a batch of one), so nothing after t and no other sequence can
    reach it. The same positions read from one teacher-forced pass over the whole batch give
    the number to set beside it.
    """
    was_training = model.training
    model.eval()
    device = model.embed.weight.device
    x, y = x.to(device), y.to(device)
    positions = torch.linspace(0, x.size(1) - 1, PREFIX_POSITIONS).round().long().unique()
    teacher = model(x)[:, positions].float()
    prefix = torch.stack([torch.stack([model(x[i : i + 1, : t + 1])[0, -1] for t in positions]) for i in range(len(x))])
    model.train(was_training)
    target = y[:, positions].flatten()
    return {
        "prefix_val_loss": F.cross_entropy(prefix.float().flatten(0, 1), target).item(),
        "val_loss_at_prefix_positions": F.cross_entropy(teacher.flatten(0, 1), target).item(),
    }

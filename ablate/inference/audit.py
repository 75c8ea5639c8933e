"""The causality audit: perturb what a position must not see and measure how far its logits move.

A model is causal when the logits at (i, t) are unchanged by any token at (i, t' > t) or
by any token of another sequence j ≠ i. The audit changes exactly those tokens and
reports the largest logit change it saw; above TOLERANCE the model leaks.
"""

import torch
import torch.nn.functional as F

from ablate.core.config import ModelConfig
from ablate.core.errors import AblateError
from ablate.core.schema import Metric
from ablate.mixers import registry
from ablate.model import LanguageModel, build_model

TOLERANCE = 1e-5  # float32, as the spec fixes it
PREFIX_POSITIONS = 16  # per window: the positions prefix_val_loss predicts


def max_leak(model: ModelConfig, batch: int = 3, seed: int = 0) -> float:
    """Largest logit change at positions that must not see the perturbed tokens, for a model
    freshly built (from `seed`). A backbone whose blocks start silent (`init: modern`: residual
    maps at zero) is built with Strawberry's draw instead: a silent block shows no leak, and
    causality is a matter of the wiring, not of the draw."""
    torch.manual_seed(seed)
    config = ModelConfig.model_validate(model)
    if config.init == "modern":
        config = config.model_copy(update={"init": "seed"})
    return model_leak(build_model(config), batch, seed)


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
    if not torch.isfinite(logits).all():  # a change of NaN compares as no change
        raise AblateError("the causality audit cannot be measured: the model's logits are NaN or inf")
    leak = 0.0
    for t in sorted({0, T // 2, max(T - 2, 0)}):  # everything after t changes in sequence 0
        changed = idx.clone()
        changed[0, t + 1 :] = torch.randint(0, vocab, (T - t - 1,), generator=g).to(device)
        leak = max(leak, (model(changed)[0, : t + 1] - logits[0, : t + 1]).abs().max().item())
    others = idx.clone()  # every other sequence of the batch changes
    others[1:] = torch.randint(0, vocab, (batch - 1, T), generator=g).to(device)
    return max(leak, (model(others)[0] - logits[0]).abs().max().item())


AUDIT_SHAPE = {  # `ablate audit --variant NAME`: a registered mixer at a small shape
    "vocab_size": 256,
    "context": 64,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 2,
    "qkv_dim": 32,
    "ffn_dim": 64,
}


def audit_mixer(name: str) -> float:
    """The largest leak of a registered mixer at AUDIT_SHAPE (an unknown name: an error with a suggestion)."""
    registry.mixer_class(name)
    return max_leak(ModelConfig(mixer=name, **AUDIT_SHAPE))


def print_table(leaks: dict[str, float], console) -> None:
    from rich.table import Table

    table = Table(title=f"causality audit (tolerance {TOLERANCE:g})")
    for col in ("variant", "causal", "largest logit change"):
        table.add_column(col, justify="right" if col.startswith("largest") else "left")
    for name, leak in leaks.items():
        table.add_row(name, "yes" if is_causal(leak) else "NO", f"{leak:.2e}")
    console.print(table)


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
        Metric.PREFIX_VAL_LOSS: F.cross_entropy(prefix.float().flatten(0, 1), target).item(),
        Metric.VAL_LOSS_AT_PREFIX_POSITIONS: F.cross_entropy(teacher.flatten(0, 1), target).item(),
    }

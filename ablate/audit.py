"""The causality audit: perturb what a position must not see and measure how far its logits move.

A model is causal when the logits at (i, t) are unchanged by any token at (i, t' > t) or
by any token of another sequence j ≠ i. The audit changes exactly those tokens and
reports the largest logit change it saw; above TOLERANCE the model leaks.
"""

from typing import Any

import torch

from ablate.errors import AblateError
from ablate.model import LanguageModel, build_model

TOLERANCE = 1e-5  # float32, as the spec fixes it


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

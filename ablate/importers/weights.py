"""Checkpoints of other trainers as ablate models: read safely, their weights renamed to
ablate's and checked one by one, so that a wrong file is one line naming the key."""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ablate.core.errors import AblateError, first_line

if TYPE_CHECKING:
    from ablate.model import LanguageModel

COMPILED_PREFIX = "_orig_mod."  # the keys of a torch.compile'd model


def read(checkpoint: str | Path | dict[str, Any], kind: str, dicts: tuple[str, ...]) -> dict[str, Any]:
    """The checkpoint dict, from a path (read on the CPU, tensors and plain data only) or as
    given; `dicts` name the entries that must be dicts."""
    if not isinstance(checkpoint, dict):
        try:
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:
            raise AblateError(
                f"cannot read the checkpoint {checkpoint} (not a torch.save file?): {type(e).__name__}: {first_line(e)}"
            ) from e
    for key in dicts:
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get(key), dict):
            raise AblateError(f"not a {kind} checkpoint: it has no {key!r} dict")
    return checkpoint


def renamed(
    state: dict[str, torch.Tensor], names: dict[str, str], expected: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict under ablate's names (`names`: theirs → ours), checked against
    ablate's `expected` state dict: an unknown, missing or misshapen key is a one-line error.
    Two of their keys may name one of ours (a tied head): they must then be equal."""
    state = {k.removeprefix(COMPILED_PREFIX): v for k, v in state.items()}
    for key in state:
        if key not in names:
            raise AblateError(f"unknown key {key!r} in the checkpoint's model")
    out: dict[str, torch.Tensor] = {}
    for key, ours in names.items():
        if key not in state:
            raise AblateError(f"the checkpoint's model lacks {key!r}")
        got, want = tuple(state[key].shape), tuple(expected[ours].shape)
        if got != want:
            raise AblateError(f"the checkpoint's {key!r} has shape {got}; its hyperparameters give {want}")
        if ours in out and not torch.equal(out[ours], state[key]):
            theirs = next(k for k, v in names.items() if v == ours)
            raise AblateError(f"{theirs} and {key} differ; the model ties them")
        out[ours] = state[key]
    return out


def loaded(
    config: Mapping[str, Any], section: str, state: dict[str, torch.Tensor], names: Callable[[Any], dict[str, str]]
) -> "LanguageModel":
    """The model `config` (from the checkpoint's `section`) describes, holding the checkpoint's
    weights `state` (named as `names(its ModelConfig)` maps them) in their dtype. The shapes are
    checked on a model that holds no memory (device meta) first: hyperparameters that disagree
    with the weights (a vocabulary of 10⁹) allocate nothing."""
    from pydantic import ValidationError

    from ablate.model import build_model

    try:
        shapes = build_model(config, device="meta")
    except ValidationError as e:
        err = e.errors()[0]
        raise AblateError(f"the checkpoint's {section}: {err['loc'][0]}: {err['msg']}") from None
    state = renamed(state, names(shapes.cfg), shapes.state_dict())
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise AblateError(f"the checkpoint's {key!r} is {tensor.dtype}: a model's weights are floating point")
        if not torch.isfinite(tensor).all():
            raise AblateError(f"the checkpoint's {key!r} holds NaN or inf: no model to evaluate")
    model = build_model(shapes.cfg)
    model.to(state["embed.weight"].dtype)
    model.load_state_dict(state)
    return model


def number(value: Any, what: str, kind: type = float) -> float | int:
    """A figure the checkpoint reports (a loss, a step), as a Python number; one line naming it
    when it is not one."""
    try:
        return kind(value)
    except (TypeError, ValueError, RuntimeError):
        raise AblateError(f"the checkpoint's {what} must be a number, got {value!r}") from None

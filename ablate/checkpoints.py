"""Checkpoints of other trainers as ablate models: read safely, their weights renamed to
ablate's and checked one by one, so that a wrong file is one line naming the key."""

import pickle
from pathlib import Path
from typing import Any

import torch

from ablate.errors import AblateError, first_line

COMPILED_PREFIX = "_orig_mod."  # the keys of a torch.compile'd model


def read(checkpoint: str | Path | dict[str, Any], kind: str, dicts: tuple[str, ...]) -> dict[str, Any]:
    """The checkpoint dict, from a path (read on the CPU, tensors and plain data only) or as
    given; `dicts` name the entries that must be dicts."""
    if not isinstance(checkpoint, dict):
        try:
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            raise AblateError(f"cannot read the checkpoint {checkpoint}: {first_line(e)}") from e
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

"""A trainer's saved state on disk: written atomically, read back or refused as damaged, and
the random-number state that makes a resumed trial take the steps an uninterrupted one would."""

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from ablate import processes
from ablate.errors import first_line, full_disk


class DamagedCheckpoint(Exception):
    """A checkpoint file that cannot be read back (truncated, overwritten, not a checkpoint)."""


def write(state: dict, path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{processes.owner()}.tmp")
    try:
        torch.save(state, tmp)
    except RuntimeError as e:
        full = full_disk(path.parent, _nbytes(state))
        tmp.unlink(missing_ok=True)
        if full:
            raise full from e
        raise
    os.replace(tmp, path)


def read(path: Path, device) -> dict:
    """A trainer's saved state; DamagedCheckpoint, with torch's first sentence, when it cannot be read."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise DamagedCheckpoint(first_line(e).split(". ")[0]) from e
    if not isinstance(state, dict) or "step" not in state:
        raise DamagedCheckpoint("not a trainer checkpoint")
    return state


def rng_state(batches: np.random.Generator) -> dict:
    """Every generator a step draws from: Python's, numpy's, torch's (CPU and CUDA), the batches'."""
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "batches": batches.bit_generator.state,
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict, batches: np.random.Generator) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    batches.bit_generator.state = rng["batches"]
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _nbytes(state) -> int:
    """The bytes of the tensors in a (nested) state dict: about what its file needs."""
    if isinstance(state, torch.Tensor):
        return state.nbytes
    if isinstance(state, dict):
        return sum(_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_nbytes(v) for v in state)
    return 0

"""A trainer's saved state on disk: written atomically, read back or refused as damaged, and
the random-number state that makes a resumed trial take the steps an uninterrupted one would."""

import os
import random
from pathlib import Path

import numpy as np
import torch

from ablate.core import processes
from ablate.core.errors import first_line, full_disk


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


# what a trainer's checkpoint holds, and the type of each entry
ENTRIES = {"step": int, "model": dict, "optimizers": list, "schedulers": list, "rng": dict, "metrics": dict}


def read(path: Path, device) -> dict:
    """A trainer's saved state, read as tensors and plain data only (`weights_only`: a file
    planted in a shared checkpoint folder cannot run code); DamagedCheckpoint, with torch's first
    sentence, when it cannot be read or lacks an entry a trainer saves."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, planted or foreign: each is a damaged file
        raise DamagedCheckpoint(first_line(e).split(". ")[0]) from e
    if not isinstance(state, dict):
        raise DamagedCheckpoint("not a trainer checkpoint")
    for key, kind in ENTRIES.items():
        if not isinstance(state.get(key), kind):
            raise DamagedCheckpoint(f"not a trainer checkpoint: no {key!r} {kind.__name__}")
    return state


def rng_state(batches: np.random.Generator) -> dict:
    """Every generator a step draws from: Python's, numpy's, torch's (CPU and CUDA), the batches'."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    rng = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),  # plain types and a tensor
        "torch": torch.get_rng_state(),
        "batches": batches.bit_generator.state,
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict, batches: np.random.Generator) -> None:
    random.setstate(rng["python"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
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

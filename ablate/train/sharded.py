"""A trial's model sharded over its group (`train.shard`), through torch's FSDP2 (`fully_shard`):
each rank holds 1/N of every parameter, of its gradient and of its optimizer state, and gathers a
block's parameters only while that block computes. The steps are those DistributedDataParallel
takes (to rounding); what changes is the memory each rank needs.

A checkpoint holds the whole model and optimizer state, in the layout a single process writes,
so that a sharded trial resumes on any number of ranks, sharded or not. Gathering it takes every
rank, which is why each rank of a sharded group takes `Trainer.state_dict` at the same point.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist


def missing() -> str | None:
    """Why this torch cannot shard a model (FSDP2 came with torch 2.6), or None when it can."""
    if not dist.is_available():
        return f"torch {torch.__version__} was built without torch.distributed"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no FSDP2 (torch.distributed.fsdp.fully_shard, torch 2.6 and later)"
    return None


def shard(model: torch.nn.Module) -> None:
    """Shard the model in place: each block a unit gathered for its own forward and backward,
    the rest (embedding, final norm, head) one unit at the root. `loss` and `hidden` gather the
    root's parameters as `forward` does."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    for method in ("loss", "hidden"):
        register_fsdp_forward_method(model, method)


@contextmanager
def blocks_kept_whole(model: torch.nn.Module) -> Iterator[None]:
    """Within it, a block gathered for its forward stays whole until the end, so that what reads
    a block's work outside its forward (the diagnostics of `per_block`) can run it."""
    for block in model.blocks:
        block.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for block in model.blocks:
            block.set_reshard_after_forward(True, recurse=False)
            block.reshard()


def whole(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of t's whole value (a sharded one gathered, which every rank must ask for)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of t (all of it where t is not sharded)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded model, on every rank (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def whole_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A plain copy of a sharded model, whole on every rank (a collective)."""
    from ablate.model import build_model

    state = model_state(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        whole = build_model(model.cfg, device)  # its initialisation draws no numbers a seed fixed
    whole.load_state_dict(state)
    return whole.train(model.training)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole state of an optimizer over a sharded model (a collective), keyed by parameter
    index as `Optimizer.state_dict` keys it, so that one process can load it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    named = get_optimizer_state_dict(model, optimizer, options=_options())
    index = {name: i for i, name in enumerate(n for g in named["param_groups"] for n in g["params"])}
    return {
        "state": {index[name]: state for name, state in named["state"].items()},
        "param_groups": [g | {"params": [index[n] for n in g["params"]]} for g in named["param_groups"]],
    }


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an optimizer's whole state, keyed by parameter index (a single process's, or
    `optimizer_state`'s), into an optimizer over the sharded model: each rank keeps its part."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    named = {
        "state": {order[i]: s for i, s in state["state"].items()},
        "param_groups": [g | {"params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, named, options=_options())

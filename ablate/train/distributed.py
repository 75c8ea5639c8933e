"""The processes that train one trial together (`train.devices`), through torch.distributed: one
per GPU over NCCL, or over gloo on a CPU. torchrun starts them (`--executor local` does, with
`train.devices > 1`); each then trains the same model on its own rows of every batch, and
DistributedDataParallel averages the gradients, so that N processes take the steps one process
would on the whole batch. A process alone is `ALONE`, whose collectives do nothing.

Rank 0 leads: it claims the units, opens the runs, logs, and writes the checkpoints; it tells the
others what to train (`send`), and every step all of them agree whether to go on (`agree`), so
that a stop (SIGTERM, pruning, a unit lost) ends every rank at the same step.
"""

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

STOP, LEFT = 1, 2  # how the ranks agree to stop: asked to (and keep the step), or the leader gone
TIMEOUT = timedelta(seconds=float(os.environ.get("ABLATE_DIST_TIMEOUT_S", "300")))  # a lost rank fails the group


@dataclass(frozen=True)
class Group:
    rank: int = 0
    size: int = 1
    control: Any = None  # a gloo group for the small messages between ranks, whatever the main backend

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a batch: equal, disjoint, and together the whole batch in order."""
        n = x.size(0) // self.size
        return x[self.rank * n : (self.rank + 1) * n]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the ranks (in place, and returned)."""
        if self.size > 1:
            dist.all_reduce(t)
        return t

    def agree(self, stop: bool, left: bool = False) -> int:
        """Whether the ranks go on (0) or stop here: STOP where any rank was asked to (SIGTERM),
        LEFT where the leader has left mid-step (`abandon`), which outranks it. Every rank calls
        it at the same point of every step."""
        if self.size == 1:
            return STOP if stop else 0
        flag = torch.tensor([LEFT if left else STOP if stop else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control)
        return int(flag.item())

    def abandon(self) -> None:
        """The leader leaves mid-trial (an exception between steps): the others stop at their
        next agreement. Best effort: the group may be broken already, which is why it is left."""
        with contextlib.suppress(RuntimeError, dist.DistBackendError):
            self.agree(True, left=True)

    def send(self, message: Any) -> None:
        """The leader's message to the others (anything picklable)."""
        if self.size > 1:
            dist.broadcast_object_list([message], src=0, group=self.control)

    def receive(self) -> Any:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module under DistributedDataParallel (its parameters made equal to rank 0's)."""
        if self.size == 1:
            return module
        device = next(module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


ALONE = Group()


def from_environment() -> Group:
    """The group torchrun (or SLURM's srun) started this process in; ALONE when it started none.
    On CUDA each rank takes the GPU of its local rank."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return ALONE
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=TIMEOUT) if cuda else None
    return Group(dist.get_rank(), size, control)


def leave(group: Group) -> None:
    if group.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


class LossOf(torch.nn.Module):
    """A model's training loss as a module's forward, which is what DistributedDataParallel wraps."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, y)

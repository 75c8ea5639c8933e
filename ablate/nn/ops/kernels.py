"""Which implementation of an op a mixer runs: ablate's own in torch (this package), or the fused
Triton kernel of the same name in flash-linear-attention (`pip install "ablate[fla]"`), which runs
on CUDA only.

A mixer's `kernel` option chooses: `torch`, `fla`, or unset, which takes fla where it is
installed and the tensors are on CUDA, and torch elsewhere. On the meta device (planning, the
budget solver and the FLOP count build every model there) the torch form always stands in: it
has the same shapes, and its matrix products are the ones the FLOP count sees. fla's kernels pick
their own chunk length, so a mixer's `chunk_size` is the torch form's.
"""

import importlib
import importlib.util
from functools import cache

import torch

from ablate.errors import AblateError

KERNELS = ("torch", "fla")
GATED = ("chunk_gla", "chunk_simple_gla", "chunk_gated_delta_rule")  # their fourth argument is a log decay g


@cache
def fla_installed() -> bool:
    return importlib.util.find_spec("fla") is not None


def check_kernel(kernel: str | None, owner: str) -> None:
    """Refuse a kernel that is not one of KERNELS, or fla where it is not installed."""
    if kernel is None:
        return
    from ablate.mixers.registry import check_choice

    check_choice(kernel, f"{owner} kernel", KERNELS)
    if kernel == "fla" and not fla_installed():
        raise AblateError(
            f'{owner} kernel fla needs flash-linear-attention: pip install "ablate[fla]" (on a CUDA machine)'
        )


def uses_fla(kernel: str | None, x: torch.Tensor) -> bool:
    """Whether an op on tensors like x runs fla's kernel under this `kernel` option."""
    if kernel == "torch" or x.device.type == "meta":
        return False
    if kernel == "fla":
        if not x.is_cuda:
            raise AblateError(f"kernel fla runs on CUDA tensors only, not on {x.device.type}: use kernel: torch")
        return True
    return default_kernel(x.device) == "fla"


def default_kernel(device: str | torch.device) -> str:
    """The kernel an unset `kernel` option takes on this device ("cpu", "cuda", "cuda:1")."""
    return "fla" if torch.device(device).type == "cuda" and fla_installed() else "torch"


def run_op(name: str, kernel: str | None, *args, chunk_size: int | None = None, **kwargs):
    """`name(*args, **kwargs)` from fla or from ablate.nn.ops, as `kernel` and the tensors decide;
    returns (o, final_state) either way (fla's parallel_based returns o alone)."""
    if uses_fla(kernel, args[0]):
        out = getattr(importlib.import_module("fla.ops"), name)(*_autocast_inputs(name, args), **kwargs)
        return (out, None) if isinstance(out, torch.Tensor) else out
    if chunk_size is not None:
        kwargs["chunk_size"] = chunk_size
    return getattr(importlib.import_module("ablate.nn.ops"), name)(*args, **kwargs)


def _autocast_inputs(name: str, args: tuple) -> tuple:
    """Under autocast, the inputs in its dtype, as fla's own layers hand them over: a Triton
    kernel is not autocast, and a float32 q from an L2 norm would otherwise reach it (fla's delta
    rule refuses float32). The log decay g stays as it is: fla sums it in float32."""
    if not torch.is_autocast_enabled("cuda"):
        return args
    dtype = torch.get_autocast_dtype("cuda")
    keep = 3 if name in GATED else None  # g's position
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and i != keep else a for i, a in enumerate(args))

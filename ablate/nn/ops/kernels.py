"""Which implementation of an op a mixer runs: ablate's own in torch (this package), or the fused
Triton kernel of the same name in flash-linear-attention (`pip install "ablate[fla]"`), which runs
on CUDA only.

A mixer's `kernel` option chooses: `torch`, `fla`, or unset, which takes fla where it is
installed and the tensors are on CUDA, and torch elsewhere. Unset, fla's kernel is first probed
(once per op and device in a process) against the torch form on a slice of its first inputs,
forward and backward: some fla kernels fail or compute wrong gradients on some cards and Triton
versions (the gated ones' backward on Hopper with Triton 3.4–3.7.0), and a default must not
choose a path that fails the trial. On the meta device (planning, the budget solver and the FLOP
count build every model there) the torch form always stands in: it has the same shapes, and its
matrix products are the ones the FLOP count sees. fla's kernels pick their own chunk length, so a
mixer's `chunk_size` is the torch form's.
"""

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from functools import cache, partial
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator

from ablate.core.errors import AblateError, first_line


@cache
def fla_installed() -> bool:
    return importlib.util.find_spec("fla") is not None


def _installed(kernel: str) -> str:
    if kernel == "fla" and not fla_installed():
        raise ValueError('fla needs flash-linear-attention: pip install "ablate[fla]" (on a CUDA machine)')
    return kernel


# a mixer's `kernel` option, for its annotation (`kernel: Kernel | None = None`): fla only where installed
Kernel = Annotated[Literal["torch", "fla"], AfterValidator(_installed)]


def uses_fla(kernel: str | None, op: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether `op` on these inputs runs fla's kernel of its name under this `kernel` option."""
    x = args[0]
    if kernel == "torch" or x.device.type == "meta":
        return False
    if kernel == "fla":
        if not x.is_cuda:
            raise AblateError(f"kernel fla runs on CUDA tensors only, not on {x.device.type}: use kernel: torch")
        return True
    return default_kernel(x.device) == "fla" and sound(op, args, kwargs)


def default_kernel(device: str | torch.device) -> str:
    """The kernel an unset `kernel` option takes on this device ("cpu", "cuda", "cuda:1")."""
    return "fla" if torch.device(device).type == "cuda" and fla_installed() else "torch"


def run_op(op: Callable, kernel: str | None, *args, chunk_size: int | None = None, **kwargs):
    """`op(*args, **kwargs)`, one of ablate.nn.ops, or fla's kernel of the same name, as `kernel` and
    the tensors decide; returns (o, final_state) either way (fla's parallel_based returns o alone)."""
    if uses_fla(kernel, op, args, kwargs):
        return fla_op(op)(*args, **kwargs)
    return torch_op(op, chunk_size)(*args, **kwargs)


@cache
def fla_op(op: Callable) -> Callable:
    """fla's kernel of op's name, called as ablate's ops are: inputs cast as autocast would,
    (o, state) out. Made once per op: a mixer calls it at every forward."""
    parameters = list(inspect.signature(op).parameters)
    decay = parameters.index("g") if "g" in parameters else None  # a log decay, which fla sums in float32

    def call(*args, **kwargs):
        kernel = getattr(importlib.import_module("fla.ops"), op.__name__)  # in the probe: a missing one fails it
        out = kernel(*_autocast_inputs(args, decay), **kwargs)
        return (out, None) if isinstance(out, torch.Tensor) else out

    return call


def torch_op(op: Callable, chunk_size: int | None = None) -> Callable:
    """ablate's own form of op, at `chunk_size` where one is given."""
    return op if chunk_size is None else partial(op, chunk_size=chunk_size)


PROBE_STEPS = 64  # the probe's slice of the first call: batch 1, this many positions
# fla's bf16 kernel against the float32 torch form, as fla's tests measure it (the RMS of the
# difference over the RMS of the reference), above which the unset kernel runs torch's form.
# fla's own tests allow 0.005 between two kernels in one half precision; bf16 inputs against a
# float32 reference add their rounding, and a broken kernel is off by far more than either.
PROBE_TOLERANCE = 0.05
_probed: dict[tuple[str, torch.device], bool] = {}  # (op, device) -> whether fla's kernel is sound there


def fallbacks() -> list[str]:
    """The fla ops this process runs in torch's form although fla is the default: their probe failed."""
    return sorted({name for (name, _), ok in _probed.items() if not ok})


def sound(op: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether fla's kernel for `op` agrees with ablate's form on this device: probed on the first
    call in this process, which prints one line where it does not and the torch form stands in."""
    key = (op.__name__, args[0].device)
    if key not in _probed:
        problem = disagreement(fla_op(op), op, args, kwargs)
        _probed[key] = problem is None
        if problem is not None:
            print(
                f"kernel: fla's {op.__name__} {problem} on this device; running ablate's torch form instead",
                file=sys.stderr,
            )
    return _probed[key]


@torch.compiler.disable
def disagreement(fast, reference, args: tuple, kwargs: dict) -> str | None:
    """None where `fast` computes what `reference` does, outputs and input gradients, on a slice of
    `args` (batch 1, PROBE_STEPS positions): `fast` as the caller runs it (under its autocast), the
    reference in float32; otherwise what went wrong, in a few words."""
    with torch.inference_mode(False), torch.enable_grad():
        small = [_probe_slice(a) for a in args]
        learned = [i for i, a in enumerate(small) if isinstance(a, torch.Tensor) and a.requires_grad]
        try:
            out = fast(*small, **kwargs)[0]
            cotangent = torch.randn(out.shape, device=out.device, generator=_generator(out.device))
            got = (out, *torch.autograd.grad(out, [small[i] for i in learned], cotangent.to(out.dtype)))
        except Exception as e:  # noqa: BLE001 (any failure of the kernel means: do not choose it)
            return f"failed ({type(e).__name__}: {first_line(e)})"
        with torch.autocast(args[0].device.type, enabled=False):
            exact = [a.detach().float().requires_grad_() if i in learned else a for i, a in enumerate(small)]
            ref = reference(*exact, **kwargs)[0]
            want = (ref, *torch.autograd.grad(ref, [exact[i] for i in learned], cotangent))
    for what, a, b in zip(("output", *(f"gradient of input {i}" for i in learned)), got, want):
        ratio = error_ratio(a, b)
        if not ratio <= PROBE_TOLERANCE:  # NaN included
            return f"differs from the torch form ({what}: error ratio {ratio:.3g} > {PROBE_TOLERANCE})"
    return None


def error_ratio(got: torch.Tensor, want: torch.Tensor) -> float:
    """The RMS of the difference over the RMS of `want`, in float64: fla's tests' measure."""
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).square().mean().sqrt() / want.square().mean().sqrt().clamp_min(1e-30)).item()


def _probe_slice(a):
    if not isinstance(a, torch.Tensor):
        return a
    small = a[:1, :PROBE_STEPS].detach().clone(memory_format=torch.contiguous_format)
    return small.requires_grad_() if small.is_floating_point() else small


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed(0)


def _autocast_inputs(args: tuple, decay: int | None) -> tuple:
    """Under autocast, the inputs in its dtype, as fla's own layers hand them over: a Triton
    kernel is not autocast, and a float32 q from an L2 norm would otherwise reach it (fla's delta
    rule refuses float32). The log decay g (at position `decay`) stays as it is: fla sums it in
    float32."""
    if not torch.is_autocast_enabled("cuda"):
        return args
    dtype = torch.get_autocast_dtype("cuda")
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and i != decay else a for i, a in enumerate(args))

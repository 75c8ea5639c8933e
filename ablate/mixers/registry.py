"""Name → mixer class. Each module of `ablate.architectures` (the top-level `architectures/`,
one mixer family per file) registers its mixers on import."""

import functools
import importlib
import inspect
import math
import pkgutil
import typing
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from ablate.core.errors import AblateError, did_you_mean

_MIXERS: dict[str, type["Mixer"]] = {}

# options renamed so that one name means one thing across mixers: the old name is answered with the new
RENAMED_OPTIONS = {"d_conv": "conv_size"}
# the bound of most mixer options, for their annotations: a width, a length, a count
Size = Annotated[int, Field(ge=1)]


class Mixer(nn.Module):
    """A sequence mixer, and the contract every one meets (`tests/test_mixer_contract.py` checks
    each registered mixer against it and names the rule a broken one breaks).

    Built as `Mixer(cfg, layer_idx, **options)`, called as `forward(x) -> y`, x and y of shape
    (B, T, d_model). x arrives normed by the block, which adds y to its residual stream. `cfg`
    is the model's ModelConfig, `layer_idx` the block's index (a layer schedule such as hybrid
    uses it); the options are the constructor's keyword-only arguments, which are also what a
    study may set under `mixer_options`.

    The rules:
    - **meta**: the forward runs on the meta device, without data (planning, the budget solver
      and the FLOP count build every trial that way), so it never branches on a tensor's values;
    - **causal**: the output at t depends on positions ≤ t of its own sequence only, unless the
      mixer says `causal = False` (a class attribute, or per instance when an option decides);
      the audit measures it either way;
    - **gradients**: every parameter gets a non-zero gradient;
    - **options**: every option is annotated with its type, so that a wrong value in a study is
      a one-line error naming the option;
    - **residual maps**: `residual_maps()` returns the linear maps whose outputs reach the
      residual stream (zeroing them silences the mixer); the GPT-2 init scales them by
      1/√(2·layers).

    - **decode**: `prefill(x) -> (y, state)` runs a prompt from an empty state and returns the
      state after it; `step(x, state, pos) -> (y, state)` takes one token x (B, 1, d_model) at
      position `pos`. The state is tensors (in dicts, lists or tuples), each with the batch
      first. Prefill then steps give the full forward's outputs, and `state_size()` is the
      numbers per sequence the state holds (None when they grow with the sequence). A mixer that
      cannot decode exactly from a state says why in `cannot_decode` (a class attribute, or per
      instance when an option decides); `sample` then recomputes the forward for it.
      `decode_limit()` is the last position it can decode to (None: no end).

    Optional: `attention_probs(x)` (the softmax attention map, for diagnostics),
    `reset_parameters()` for parameters the backbone's draw does not suit (gains at 1), and
    `aux_loss`: a tensor a mixer that trains with an auxiliary objective (a router's load
    balance) sets in each training forward; the trainer adds it to the loss and logs it.
    `adds_residual = True` marks a mixer that runs several residual steps itself: the block then
    passes it the raw stream and takes its output as the new stream.
    """

    name: str = ""
    description: str = ""
    causal: bool = True
    adds_residual: bool = False
    aux_loss: torch.Tensor | None = None
    cannot_decode: str | None = "it defines no prefill and step"

    def residual_maps(self) -> list[nn.Linear]:
        """The linear maps whose outputs the mixer hands to the residual stream."""
        return [self.out]

    def state_size(self) -> int | None:
        """Numbers per sequence a decoder carries from token to token; None when it grows with the sequence."""
        return None

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """forward(x) from an empty state, and the state after x."""
        raise AblateError(f"mixer {self.name!r} cannot decode from a state: {self.cannot_decode}")

    def step(self, x: torch.Tensor, state: Any, pos: int) -> tuple[torch.Tensor, Any]:
        """The output for one token x (B, 1, d_model) at position `pos` after `state`, and the new state."""
        raise AblateError(f"mixer {self.name!r} cannot decode from a state: {self.cannot_decode}")

    def decode_limit(self) -> int | None:
        """The number of positions it can decode (a table of learned biases ends); None: no end."""
        return None

    def reset_parameters(self) -> None:
        """Initialise parameters that the backbone's default draw does not suit (gains, biases).
        The backbone calls it after that draw; the default keeps the draw."""

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor | None:
        """The (B, H, T, T) attention map for input x (as forward gets it), for diagnostics;
        None for a mixer that has no softmax attention map."""
        return None


def state_numbers(state: Any) -> int:
    """Numbers per sequence in a decoding state: every tensor's, over its batch (the first axis)."""
    if isinstance(state, torch.Tensor):
        return state[0].numel() if state.dim() else 0
    if isinstance(state, dict):
        state = list(state.values())
    if isinstance(state, list | tuple):
        return sum(state_numbers(part) for part in state)
    return 0


def register(name: str):
    """Class decorator: make a Mixer subclass available to studies under `name`."""

    def add(cls: type[Mixer]) -> type[Mixer]:
        if name in _MIXERS:
            raise ValueError(f"mixer {name!r} registered twice")
        cls.name = name
        cls.description = (inspect.getdoc(cls) or "").splitlines()[0] if cls.__doc__ else ""
        _MIXERS[name] = cls
        return cls

    return add


@functools.cache  # once: planning asks for mixers hundreds of times
def _load_families() -> None:
    from ablate import architectures

    for module in pkgutil.iter_modules(architectures.__path__):
        importlib.import_module(f"ablate.architectures.{module.name}")


def variants() -> list[str]:
    """Names of every registered mixer, sorted."""
    _load_families()
    return sorted(_MIXERS)


def mixer_class(name: str) -> type[Mixer]:
    _load_families()
    if name not in _MIXERS:
        raise AblateError(f"unknown variant {name!r}{did_you_mean(name, _MIXERS)}")
    return _MIXERS[name]


def mixer_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The mixer's options with defaults filled in. An unknown option is an error, and so is a
    value its constructor's annotation refuses (`window: Size | None`, `form: Literal[...]`):
    the bounds are the annotation's, so that every option error reads the same way."""
    params = {
        p.name: p
        for p in inspect.signature(mixer_class(name).__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    for key, value in given.items():
        if key not in params:
            renamed = RENAMED_OPTIONS.get(key)
            hint = f" (did you mean {renamed!r}?)" if renamed in params else did_you_mean(key, params)
            raise AblateError(f"mixer {name!r} has no option {key!r}{hint}")
        if (problem := _refused(params[key].annotation, value)) is not None:
            raise AblateError(f"mixer {name!r} option {key!r}: {problem}")
    return {key: p.default for key, p in params.items()} | given


def _refused(annotation: Any, value: Any) -> str | None:
    """Why the annotation refuses the value (pydantic's word, and a did-you-mean among its names),
    or None."""
    from pydantic import TypeAdapter, ValidationError

    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"Input should be a finite number, got {value!r}"
    try:
        TypeAdapter(annotation).validate_python(value, strict=True)
    except ValidationError as e:
        names = [a for a in _literals(annotation) if isinstance(a, str)]
        close = did_you_mean(value, names) if isinstance(value, str) and value not in names else ""
        return f"{e.errors()[0]['msg']}, got {value!r}{close}"
    return None


def _literals(annotation: Any) -> list[Any]:
    """The values of the Literal types in an annotation (through unions and Annotated)."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literals(arg)]


def mixer_entry(entry: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A mixer named inside another mixer's options (a hybrid's pattern, a mixture's experts),
    written as a name or {name: {options}}: its name and its checked options, defaults filled in."""
    if isinstance(entry, str):
        return entry, mixer_options(entry, {})
    if isinstance(entry, dict) and len(entry) == 1:
        name, options = next(iter(entry.items()))
        if isinstance(name, str) and isinstance(options, dict | None):
            return name, mixer_options(name, options or {})
    raise AblateError(f"{where} entries are a mixer name or {{name: {{options}}}}, got {entry!r}")

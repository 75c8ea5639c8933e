"""Name → mixer class. Each file in architectures/ registers its mixers on import."""

import difflib
import importlib
import inspect
import pkgutil
from typing import Any

from torch import nn

from ablate.errors import AblateError

_MIXERS: dict[str, type["Mixer"]] = {}


class Mixer(nn.Module):
    """A sequence mixer: built as `Mixer(cfg, **options)`, called as `forward(x) -> y`.

    x and y are (B, T, d_model); x arrives already normed by the block. `cfg` is the
    model's ModelConfig; options are the keyword-only arguments of the subclass's
    constructor, which are also what a study may set under `mixer_options`.
    """

    name: str = ""
    description: str = ""
    causal: bool = True


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


def _load_architectures() -> None:
    import architectures

    for module in pkgutil.iter_modules(architectures.__path__):
        importlib.import_module(f"architectures.{module.name}")


def variants() -> list[str]:
    """Names of every registered mixer, sorted."""
    _load_architectures()
    return sorted(_MIXERS)


def mixer_class(name: str) -> type[Mixer]:
    _load_architectures()
    if name not in _MIXERS:
        raise AblateError(f"unknown variant {name!r}{did_you_mean(name, _MIXERS)}")
    return _MIXERS[name]


def mixer_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The mixer's options with defaults filled in; unknown options are an error."""
    params = {
        p.name: p.default
        for p in inspect.signature(mixer_class(name).__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    for key in given:
        if key not in params:
            raise AblateError(f"mixer {name!r} has no option {key!r}{did_you_mean(key, params)}")
    return {**params, **given}


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

"""ablate: architecture ablations for small language models, done honestly.

The public functions load on first use, so that `ablate --help` and validating a study
(`ablate.core.config`) do not import torch.
"""

from importlib import import_module
from importlib.metadata import version

__version__ = version("ablate")
__all__ = ["__version__", "build_model", "load_nanogpt", "load_strawberry", "variants"]

_HOMES = {
    "build_model": "ablate.model",
    "load_nanogpt": "ablate.importers.nanogpt",
    "load_strawberry": "ablate.importers.strawberry",
    "variants": "ablate.mixers.registry",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'ablate' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)

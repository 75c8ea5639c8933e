"""ablate: architecture ablations for small language models, done honestly."""

from importlib.metadata import version

from ablate.mixers.registry import variants
from ablate.model import build_model
from ablate.strawberry import load_strawberry

__version__ = version("ablate")
__all__ = ["__version__", "build_model", "load_strawberry", "variants"]

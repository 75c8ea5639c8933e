"""ablate: architecture ablations for small language models, done honestly."""

from ablate.model import build_model
from ablate.registry import variants
from ablate.strawberry import load_strawberry

__all__ = ["build_model", "load_strawberry", "variants"]

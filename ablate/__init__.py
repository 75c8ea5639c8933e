"""ablate: architecture ablations for small language models, done honestly."""

from ablate.model import build_model
from ablate.registry import variants

__all__ = ["build_model", "variants"]

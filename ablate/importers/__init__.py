"""Other trainers' checkpoints as ablate models, one module per format, each answering the same
`Importer` protocol: `imported(path)` gives the model with what the checkpoint says of itself.

`weights` holds what every format shares: a safe read, the renaming of its weights checked key by
key, and the model built on the meta device first, so that a wrong file is one line naming the key.
"""

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ablate.model import LanguageModel

KINDS = ("strawberry", "nanogpt", "hf")  # each the name of its module here


@dataclass
class Imported:
    """What an importer reads off a checkpoint: the model, the checkpoint's own settings by
    section (recorded as params), its step, the losses it reports, the file whose hash
    identifies it and its tokenizer file (None where it has none)."""

    model: "LanguageModel"
    settings: dict[str, dict[str, Any]]
    step: int
    reported: dict[str, float]
    identity: Path
    tokenizer: Path | None = None


class Importer(Protocol):
    """A format's module: `imported(path)` reads one checkpoint of the format."""

    def imported(self, path: Path) -> Imported: ...


def importer(kind: str) -> Importer:
    """The module that reads checkpoints of `kind` (one of KINDS), imported when asked for."""
    return import_module(f"{__name__}.{kind}")

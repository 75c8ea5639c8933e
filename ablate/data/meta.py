"""What a run logs of its data."""

from pydantic import BaseModel, ConfigDict


class DataMeta(BaseModel):
    """What a run logs of its data: where it came from, its fingerprint, its sizes and the losses
    and accuracy to read its results against."""

    model_config = ConfigDict(extra="forbid")

    source: str
    fingerprint: str
    vocab_size: int
    unigram_entropy: float  # the loss of a model that ignores context
    python_version: str
    n_train_tokens: int | None = None  # a corpus's
    n_val_tokens: int | None = None
    files: int | None = None
    build_s: float = 0.0  # a corpus's tokenizing time
    chance_accuracy: float | None = None  # a task's: the best guess without the capability it tests

"""Where a study's tokens come from: a corpus (text or token arrays, `corpus`) or a synthetic
task (`tasks`). The Trainer and the runner see either through `DataSource`."""

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch

from ablate.core.config import DataConfig, TaskConfig
from ablate.data.corpus import prepare
from ablate.data.meta import DataMeta
from ablate.data.tasks import TaskData

Batch = tuple[torch.Tensor, torch.Tensor]  # inputs and targets, (B, T) each


class DataSource(Protocol):
    """What training and evaluation need of data."""

    meta: DataMeta  # logged with every run
    tokenizer_path: Path | None  # saved beside a trained model; None where tokens are not text

    def describe(self) -> str: ...

    def check_context(self, context: int) -> None:
        """Refuse (AblateError) a context the data cannot fill."""

    def batches(self, context: int, batch_size: int, seed: int, device=None) -> Iterator[Batch]:
        """Training batches, an endless stream whose order the seed fixes."""

    def val_batches(self, context: int, batch_size: int, n_batches: int) -> list[Batch]:
        """The fixed validation set."""


def open_source(config: DataConfig | TaskConfig, cache: Path, base_dir: Path) -> DataSource:
    """The data a study's `data:` section describes (a corpus is built into `cache` once)."""
    if isinstance(config, TaskConfig):
        return TaskData(config, base_dir)
    return prepare(config, cache, base_dir)

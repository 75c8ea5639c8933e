import textwrap
from pathlib import Path

import pytest

from ablate.config import DataConfig
from ablate.data.corpus import prepare

# A small slice of the default corpus: the stdlib is on every machine, so tests need nothing else.
TINY_DATA = {"source": "stdlib", "vocab_size": 512, "max_bytes": 300_000}


def write_study(directory: Path, text: str, name: str = "study.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


TINY_STUDY = """\
name: tiny
data: {source: stdlib, vocab_size: 512, max_bytes: 300000}
model: {context: 32, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn_dim: 64}
train: {steps: 30, batch_size: 8, warmup: 5, eval_every: 15, eval_batches: 2, log_every: 5}
variants:
  - {name: mha, model: {mixer: mha}}
  - {name: aft, model: {mixer: aft-simple, ffn: false}}
seeds: [0, 1]
"""


@pytest.fixture
def own_store(monkeypatch):
    """`main` in this process, on the results folder's own store: another test may have set
    MLFLOW_TRACKING_URI (mlflow.set_tracking_uri exports it)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return prepare(DataConfig(**TINY_DATA), tmp_path_factory.mktemp("cache"))

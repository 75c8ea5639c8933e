"""Corpus → tokenizer → cached token arrays → batches.

Text sources are tokenized by HF `tokenizers`: a byte-level BPE trained to the vocabulary
size (the default), one token per character (`char`, the sorted characters of the text,
as nanoGPT's shakespeare_char encodes them), per byte (`byte`), or by a tokenizer of the
researcher's own. Token arrays are used as they are. The token stream is split into train and
val by whole pieces chosen with a fixed seed (`split: pieces`) or at its tail (`split: tail`,
nanoGPT's split); a pair of arrays (`train:` and `val:`, nanoGPT's train.bin and val.bin, or
llm.c's train and val shards) is used as split. The arrays are written once to a cache
directory (`build`) and memory-mapped from there on.
"""

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ablate.core.config import DataConfig
from ablate.core.errors import AblateError
from ablate.data.build import build, remove_stale_builds, token_meta
from ablate.data.meta import DataMeta
from ablate.data.sources import source_files, tokenizer_file
from ablate.data.stream import locked

CACHE_VERSION = 2


@dataclass
class Corpus:
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    meta: DataMeta
    directory: Path | None  # its cache entry; None for tokens that were never cached
    built: bool  # False when it came from the cache

    @property
    def tokenizer_path(self) -> Path | None:
        path = self.directory / "tokenizer.json" if self.directory is not None else None
        return path if path is not None and path.exists() else None

    def describe(self) -> str:
        m = self.meta
        return (
            f"data: {m.source} — {m.n_train_tokens:,} train / {m.n_val_tokens:,} val tokens, "
            f"vocab {m.vocab_size}, fingerprint {m.fingerprint}; tokenizer and splits "
            f"{'built' if self.built else 'loaded from cache'} (build took {m.build_s:.1f}s)"
        )

    def check_context(self, context: int) -> None:
        """Both splits hold a window of context + 1 tokens: checked before any store is written."""
        for name, tokens in (("train", self.train), ("val", self.val)):
            if tokens.size <= context + 1:
                raise AblateError(
                    f"data.source: the {name} split has {tokens.size:,} tokens, too few for context {context} "
                    "(more text, or a larger val_fraction)"
                )

    def batches(self, context: int, batch_size: int, seed: int, device=None) -> "Batches":
        return Batches(self.train, context, batch_size, seed, device)

    def val_batches(self, context: int, batch_size: int, n_batches: int) -> list:
        return val_batches(self.val, context, batch_size, n_batches)


def in_memory(train: np.ndarray, val: np.ndarray, vocab_size: int, source: str) -> Corpus:
    """A corpus of token arrays already in memory (the bench's random tokens): no cache, no tokenizer."""
    return Corpus(train, val, vocab_size, token_meta(source, train, val, vocab_size), directory=None, built=True)


def prepare(cfg: DataConfig, cache_root: Path, base_dir: Path = Path(".")) -> Corpus:
    """Return the corpus, building and caching it first if this configuration is new."""
    files = source_files(cfg, base_dir)
    own = tokenizer_file(cfg, base_dir)
    key = _cache_key(cfg, files + ([own] if own is not None else []))
    directory = cache_root / key
    remove_stale_builds(cache_root)
    built = not (directory / "meta.json").exists()
    if built:  # one build of an entry at a time: another process's tokens are not this one's to remove
        with locked(cache_root / f"{key}.lock"):
            built = not (directory / "meta.json").exists()
            if built:
                build(cfg, files, directory, base_dir)
    meta = DataMeta.model_validate_json((directory / "meta.json").read_text())
    return Corpus(
        train=np.load(directory / "train.npy", mmap_mode="r"),
        val=np.load(directory / "val.npy", mmap_mode="r"),
        vocab_size=meta.vocab_size,
        meta=meta,
        directory=directory,
        built=built,
    )


def _cache_key(cfg: DataConfig, files: list[Path]) -> str:
    h = hashlib.sha256(f"{CACHE_VERSION}|{cfg.model_dump_json()}|{platform.python_version()}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


class Batches:
    """Random windows of `context + 1` tokens; the seed fixes the order for every variant alike.

    With `device` (a GPU), the token array lives on the device and each batch is gathered there:
    only the batch's start offsets cross from the host, pinned and without a wait. The offsets
    come from the same generator either way, so a seed gives the same batches on any device.
    """

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int, device=None):
        if tokens.size <= context + 1:
            raise AblateError(f"the corpus split has {tokens.size} tokens, too few for context {context}")
        self.tokens, self.batch_size = tokens, batch_size
        self.window = np.arange(context + 1)
        self.rng = np.random.default_rng(seed)
        self.device = None if device is None else torch.device(device)
        if self.device is not None:
            self.resident = torch.from_numpy(tokens.astype(np.int32)).to(self.device)
            self.device_window = torch.arange(context + 1, device=self.device)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, self.tokens.size - len(self.window) + 1, size=self.batch_size)
        if self.device is None:
            chunk = torch.from_numpy(self.tokens[starts[:, None] + self.window].astype(np.int64))
        else:
            offsets = torch.from_numpy(starts)
            if self.device.type == "cuda":
                offsets = offsets.pin_memory()
            offsets = offsets.to(self.device, non_blocking=True)
            chunk = self.resident[offsets[:, None] + self.device_window].long()
        return chunk[:, :-1], chunk[:, 1:]


def val_batches(val: np.ndarray, context: int, batch_size: int, n_batches: int) -> list:
    """A fixed set of val batches, the same for every trial of the same shape."""
    batches = Batches(val, context, batch_size, seed=0)
    return [next(batches) for _ in range(n_batches)]

"""Token streams too large for memory: text tokenized into a file a chunk at a time (resumed
where an interrupted run stopped), split into train and val by copying whole pieces, and
summarised (fingerprint, unigram entropy) a block at a time.

Memory stays bounded by CHUNK_CHARS of text and its tokens, whatever the corpus's size; the
tokenizer itself (`tokenizers`, in Rust) encodes a chunk's documents in parallel threads.
"""

import fcntl
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHUNK_CHARS = 1 << 20  # text tokenized at once (its encodings take about 100 bytes a token)
BLOCK = 1 << 22  # tokens read at once


class TokenFile:
    """A token array on disk, read a slice at a time with plain reads: what a build reads stays
    out of the process's memory (a memory map's pages would count in it until evicted)."""

    def __init__(self, path: Path, dtype, offset: int = 0, size: int | None = None, cast=None):
        self.path, self.stored, self.offset = path, np.dtype(dtype), offset
        self.dtype = np.dtype(cast or dtype)  # what a slice gives
        self.size = (path.stat().st_size - offset) // self.stored.itemsize if size is None else size
        self.nbytes = self.size * self.dtype.itemsize

    @classmethod
    def npy(cls, path: Path, cast=None) -> "TokenFile":
        """An .npy file's array, read past its header; its shape and order are `npy_layout`'s."""
        with path.open("rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            tokens = cls(path, dtype, f.tell(), shape[0] if len(shape) == 1 else 0, cast)
        tokens.npy_layout = (len(shape), fortran)
        return tokens

    def __getitem__(self, part: slice) -> np.ndarray:
        start, stop, _ = part.indices(self.size)
        with self.path.open("rb") as f:
            count, at = max(0, stop - start), self.offset + start * self.stored.itemsize
            return np.fromfile(f, dtype=self.stored, count=count, offset=at).astype(self.dtype, copy=False)

    def blocks(self):
        for start in range(0, self.size, BLOCK):
            yield self[start : start + BLOCK]


class Concatenated:
    """Token files read as one stream, in the order given (llm.c's shards)."""

    def __init__(self, parts: list[TokenFile]):
        self.parts, self.dtype = parts, parts[0].dtype
        self.starts = np.cumsum([0] + [p.size for p in parts])
        self.size = int(self.starts[-1])
        self.nbytes = self.size * self.dtype.itemsize

    def __getitem__(self, part: slice) -> np.ndarray:
        start, stop, _ = part.indices(self.size)
        pieces = [
            p[max(start - at, 0) : stop - at]
            for p, at in zip(self.parts, self.starts[:-1].tolist())
            if at < stop and at + p.size > start
        ]
        return np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)


def tokenized(
    folder: Path,
    tokenizer,
    docs: Iterable[str],
    dtype,
    separator: int | None,
    progress: Callable[[int, int], None] = lambda docs, tokens: None,
) -> TokenFile:
    """The documents' tokens (each document followed by `separator` where there is one), written to
    `folder`/tokens.bin and memory-mapped. Each chunk's tokens reach the disk before
    `progress.json` counts them, so a run cut off midway resumes after the last whole chunk."""
    tokens_file, record = folder / "tokens.bin", folder / "progress.json"
    done = json.loads(record.read_text()) if record.exists() else {"docs": 0, "tokens": 0}
    itemsize = np.dtype(dtype).itemsize
    folder.mkdir(parents=True, exist_ok=True)
    with tokens_file.open("ab") as out:
        out.truncate(done["tokens"] * itemsize)  # a chunk written in part, before the cut: again
        batch, size = [], 0
        for doc in itertools.islice(docs, done["docs"], None):
            batch.append(doc)
            size += len(doc)
            if size >= CHUNK_CHARS:
                _write_chunk(out, tokenizer, batch, dtype, separator, done, record)
                progress(done["docs"], done["tokens"])
                batch, size = [], 0
        if batch:
            _write_chunk(out, tokenizer, batch, dtype, separator, done, record)
            progress(done["docs"], done["tokens"])
    return TokenFile(tokens_file, dtype)


def _write_chunk(out, tokenizer, batch: list[str], dtype, separator: int | None, done: dict, record: Path) -> None:
    parts = []
    for enc in tokenizer.encode_batch_fast(batch):
        parts.append(np.asarray(enc.ids, dtype=dtype))
        if separator is not None:
            parts.append(np.asarray([separator], dtype=dtype))
    chunk = np.concatenate(parts)
    append(out, chunk)
    out.flush()
    os.fsync(out.fileno())
    done["docs"] += len(batch)
    done["tokens"] += chunk.size
    partial = record.with_suffix(".tmp")
    partial.write_text(json.dumps(done))
    os.replace(partial, record)


@contextmanager
def locked(path: Path):
    """One process at a time holds the lock file `path` (another waits for it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append(out, tokens: np.ndarray) -> None:
    """Tokens written to a file: plain writes, so that a full disk is an OSError (ENOSPC), where a
    memory map's writes would kill the process (SIGBUS)."""
    out.write(np.ascontiguousarray(tokens).tobytes())


@contextmanager
def npy_file(path: Path, dtype, size: int):
    """An .npy file of `size` tokens, open for `append`."""
    with path.open("wb") as out:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (size,)}
        np.lib.format.write_array_header_1_0(out, header)
        yield out


def split_into(folder: Path, tokens: TokenFile, is_val: np.ndarray, piece: int) -> tuple[TokenFile, TokenFile]:
    """train.npy and val.npy in `folder`: the stream's whole pieces of `piece` tokens, each to the
    split `is_val` says, copied one piece at a time (what is past the last whole piece is dropped)."""
    n_val = int(is_val.sum())
    train_file, val_file = folder / "train.npy", folder / "val.npy"
    with (
        npy_file(train_file, tokens.dtype, (is_val.size - n_val) * piece) as train,
        npy_file(val_file, tokens.dtype, n_val * piece) as val,
    ):
        per_block = max(1, BLOCK // piece)
        for first in range(0, is_val.size, per_block):  # a block of pieces read at once
            block = tokens[first * piece : (first + per_block) * piece]
            for i, to_val in enumerate(is_val[first : first + per_block].tolist()):
                append(val if to_val else train, block[i * piece : (i + 1) * piece])
    return TokenFile.npy(train_file), TokenFile.npy(val_file)


def copy_into(folder: Path, name: str, tokens: TokenFile, start: int = 0, stop: int | None = None) -> TokenFile:
    """`folder`/`name`.npy holding tokens[start:stop], copied a block at a time."""
    stop = tokens.size if stop is None else stop
    with npy_file(folder / f"{name}.npy", tokens.dtype, stop - start) as out:
        for at in range(start, stop, BLOCK):
            append(out, tokens[at : min(at + BLOCK, stop)])
    return TokenFile.npy(folder / f"{name}.npy")


def fingerprint(train: np.ndarray, val: np.ndarray) -> str:
    """The sha256 of both splits' bytes (read a block at a time), its first 16 hex digits."""
    h = hashlib.sha256()
    for part in (train, val):
        for start in range(0, part.size, BLOCK):
            h.update(np.ascontiguousarray(part[start : start + BLOCK]).tobytes())
    return h.hexdigest()[:16]  # the same digest as of the whole arrays' bytes at once


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy of the token frequencies in nats: the loss of a model that ignores context."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for start in range(0, tokens.size, BLOCK):
        block = np.bincount(tokens[start : start + BLOCK], minlength=vocab_size)
        counts = np.pad(counts, (0, max(0, block.size - counts.size)))
        counts[: block.size] += block
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())

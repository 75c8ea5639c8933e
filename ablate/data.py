"""Corpus → tokenizer → cached token arrays → batches.

Text sources are tokenized with a byte-level BPE trained by HF `tokenizers`; token
arrays are used as they are. Either way the token stream is split into train and
val by whole pieces chosen with a fixed seed, written once to a cache directory,
and memory-mapped from there on.
"""

import glob
import hashlib
import json
import os
import platform
import shutil
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ablate.errors import AblateError

CACHE_VERSION = 1
EOT = "<|endoftext|>"
TEXT_BATCH = 256  # documents tokenized per call, to bound memory


class DataConfig(BaseModel):
    """The `data:` section of a study."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "stdlib",
        min_length=1,
        description="'stdlib' (the Python standard library's source), a text file, a directory, "
        "a glob, or a token array (.npy, or .bin of uint16)",
    )
    vocab_size: int = Field(8192, gt=256, le=2**32)
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    max_bytes: int | None = Field(None, gt=0, description="use only the first documents up to this size")


@dataclass
class Corpus:
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    meta: dict
    directory: Path
    built: bool  # False when it came from the cache

    @property
    def tokenizer_path(self) -> Path | None:
        path = self.directory / "tokenizer.json"
        return path if path.exists() else None

    def describe(self) -> str:
        m = self.meta
        return (
            f"data: {m['source']} — {m['n_train_tokens']:,} train / {m['n_val_tokens']:,} val tokens, "
            f"vocab {m['vocab_size']}, fingerprint {m['fingerprint']}; tokenizer and splits "
            f"{'built' if self.built else 'loaded from cache'} (build took {m['build_s']:.1f}s)"
        )

    def batches(self, context: int, batch_size: int, seed: int, device=None) -> "Batches":
        return Batches(self.train, context, batch_size, seed, device)

    def val_batches(self, context: int, batch_size: int, n_batches: int) -> list:
        return val_batches(self.val, context, batch_size, n_batches)


def stdlib_files() -> list[Path]:
    """The running interpreter's standard library source: tens of MB of real text, offline."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())


def source_files(cfg: DataConfig, base_dir: Path) -> list[Path]:
    """The files a source names; relative paths are taken from the study file's directory."""
    if cfg.source == "stdlib":
        return stdlib_files()
    path = Path(cfg.source).expanduser()
    if not path.is_absolute():
        path = base_dir / path
        inside = base_dir.resolve()
        if not Path(os.path.realpath(path.parent if glob.has_magic(str(path)) else path)).is_relative_to(inside):
            raise AblateError(
                f"data.source: {cfg.source} leads outside the study's directory ({inside}); "
                "give an absolute path to read data from elsewhere"
            )
    if glob.has_magic(str(path)):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        raise AblateError(f"data.source: {path} does not exist")
    if not files:
        raise AblateError(f"data.source: {path} matches no files")
    return files


def is_token_array(files: list[Path]) -> bool:
    return len(files) == 1 and files[0].suffix in (".npy", ".bin")


def prepare(cfg: DataConfig, cache_root: Path, base_dir: Path = Path(".")) -> Corpus:
    """Return the corpus, building and caching it first if this configuration is new."""
    files = source_files(cfg, base_dir)
    key = _cache_key(cfg, files)
    directory = cache_root / key
    built = not (directory / "meta.json").exists()
    if built:
        _build(cfg, files, directory)
    meta = json.loads((directory / "meta.json").read_text())
    return Corpus(
        train=np.load(directory / "train.npy", mmap_mode="r"),
        val=np.load(directory / "val.npy", mmap_mode="r"),
        vocab_size=cfg.vocab_size,
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


def _build(cfg: DataConfig, files: list[Path], directory: Path) -> None:
    start = time.perf_counter()
    if is_token_array(files):
        tokens, tokenizer = _load_token_array(files[0], cfg.vocab_size), None
    else:
        tokens, tokenizer = _tokenize_text(_read_documents(files, cfg.max_bytes), cfg.vocab_size)
    train, val = split(tokens, cfg.val_fraction)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".building-"))
    try:
        np.save(tmp / "train.npy", train)
        np.save(tmp / "val.npy", val)
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        meta = {
            "source": cfg.source,
            "files": len(files),
            "vocab_size": cfg.vocab_size,
            "n_train_tokens": int(train.size),
            "n_val_tokens": int(val.size),
            "fingerprint": fingerprint(train, val),
            "unigram_entropy": unigram_entropy(train, cfg.vocab_size),
            "python_version": platform.python_version(),
            "build_s": round(time.perf_counter() - start, 3),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, directory)
        except OSError:  # another process finished the same build first
            if not (directory / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_documents(files: list[Path], max_bytes: int | None) -> list[str]:
    docs, total = [], 0
    for f in files:
        raw = f.read_bytes()
        if b"\0" in raw[:8192]:
            continue  # binary file inside a text directory
        docs.append(raw.decode("utf-8", errors="replace"))
        total += len(raw)
        if max_bytes is not None and total >= max_bytes:
            break
    if not docs:
        raise AblateError("data.source: no text documents found")
    return docs


def _tokenize_text(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer)
    eot = tokenizer.token_to_id(EOT)
    dtype = token_dtype(vocab_size)
    parts = []
    for i in range(0, len(docs), TEXT_BATCH):
        for enc in tokenizer.encode_batch(docs[i : i + TEXT_BATCH]):
            parts.append(np.asarray(enc.ids, dtype=dtype))
            parts.append(np.asarray([eot], dtype=dtype))
    return np.concatenate(parts), tokenizer


def _load_token_array(path: Path, vocab_size: int) -> np.ndarray:
    tokens = np.load(path, mmap_mode="r") if path.suffix == ".npy" else np.memmap(path, dtype=np.uint16, mode="r")
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise AblateError(f"data.source: {path} must hold a 1-D integer token array")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise AblateError(f"data.source: {path} holds token ids outside [0, data.vocab_size={vocab_size})")
    return np.asarray(tokens, dtype=token_dtype(vocab_size))


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def split(tokens: np.ndarray, val_fraction: float, max_piece: int = 16384, min_pieces: int = 20):
    """Deterministic train/val split by whole pieces of the stream, picked with a fixed seed."""
    piece = max(1, min(max_piece, tokens.size // min_pieces))
    n_pieces = tokens.size // piece
    if n_pieces < 2:
        raise AblateError(f"data.source: the corpus has only {tokens.size} tokens, too few to split")
    n_val = max(1, round(val_fraction * n_pieces))
    is_val = np.zeros(n_pieces, dtype=bool)
    is_val[np.random.default_rng(0).choice(n_pieces, size=n_val, replace=False)] = True
    pieces = tokens[: n_pieces * piece].reshape(n_pieces, piece)
    return pieces[~is_val].reshape(-1), pieces[is_val].reshape(-1)


def fingerprint(train: np.ndarray, val: np.ndarray) -> str:
    h = hashlib.sha256()
    for part in (train, val):
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:16]


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy of the token frequencies in nats: the loss of a model that ignores context."""
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


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

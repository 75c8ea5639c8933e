"""Corpus → tokenizer → cached token arrays → batches.

Text sources are tokenized by HF `tokenizers`: a byte-level BPE trained to the vocabulary
size (the default), one token per character (`char`, the sorted characters of the text,
as nanoGPT's shakespeare_char encodes them) or per byte (`byte`). Token arrays are used
as they are. The token stream is split into train and val by whole pieces chosen with a
fixed seed (`split: pieces`) or at its tail (`split: tail`, nanoGPT's split); a pair of
arrays (`train:` and `val:`, nanoGPT's train.bin and val.bin) is used as split. The
arrays are written once to a cache directory and memory-mapped from there on.
"""

import functools
import glob
import hashlib
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

from ablate import processes
from ablate.config import DataConfig
from ablate.data import tokenize
from ablate.data.meta import DataMeta
from ablate.data.tokenize import token_dtype
from ablate.errors import AblateError, first_line, full_disk

CACHE_VERSION = 2
BUILDING = ".building-"  # + owner + "-" + random: a cache entry being written
STALE_BUILD_S = 3600  # another host's unfinished build older than this was cut off


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
    return Corpus(train, val, vocab_size, _token_meta(source, train, val, vocab_size), directory=None, built=True)


def _token_meta(source: str, train: np.ndarray, val: np.ndarray, vocab_size: int, **more) -> DataMeta:
    """What a run logs of its data: where it came from, its sizes, fingerprint and unigram entropy."""
    return DataMeta(
        source=source,
        vocab_size=vocab_size,
        n_train_tokens=int(train.size),
        n_val_tokens=int(val.size),
        fingerprint=fingerprint(train, val),
        unigram_entropy=unigram_entropy(train, vocab_size),
        python_version=platform.python_version(),
        **more,
    )


def stdlib_files() -> list[Path]:
    """The running interpreter's standard library source: tens of MB of real text, offline."""
    return list(_stdlib_files())


@functools.cache
def _stdlib_files() -> tuple[Path, ...]:
    """Walked once per process (a second or so): the plan and the data both ask for it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return tuple(sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file()))


def source_files(cfg: DataConfig, base_dir: Path) -> list[Path]:
    """The files a source names (the train and val arrays, for that pair); relative paths are
    taken from the study file's directory."""
    if cfg.train is not None:
        return [
            _one_file(_inside(cfg.train, base_dir, "train"), "train"),
            _one_file(_inside(cfg.val, base_dir, "val"), "val"),
        ]
    if cfg.source == "stdlib":
        return stdlib_files()
    path = _inside(cfg.source, base_dir, "source")
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


def _inside(value: str, base_dir: Path, key: str) -> Path:
    """A data path: absolute as given, or relative to the study's directory and inside it."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    path = base_dir / path
    inside = base_dir.resolve()
    if not Path(os.path.realpath(path.parent if glob.has_magic(str(path)) else path)).is_relative_to(inside):
        raise AblateError(
            f"data.{key}: {value} leads outside the study's directory ({inside}); "
            "give an absolute path to read data from elsewhere"
        )
    return path


def _one_file(path: Path, key: str) -> Path:
    if not path.is_file():
        raise AblateError(f"data.{key}: {path} does not exist")
    return path


def vocab_size(cfg: DataConfig, files: list[Path], docs: list[str] | None = None) -> int:
    """The model's vocabulary: as given, else 8192 (BPE, token arrays), 256 (bytes) or the number
    of distinct characters of the text (char; from `docs` when they are read already)."""
    if cfg.vocab_size is not None:
        return cfg.vocab_size
    if cfg.tokenizer == "char":
        found = len(tokenize.characters(docs if docs is not None else _read_documents(files, cfg.max_bytes)))
        if found < 2:
            raise AblateError(f"data.source: the text has {found} distinct character(s); nothing to predict")
        return found
    return 256 if cfg.tokenizer == "byte" else 8192


def is_token_array(files: list[Path]) -> bool:
    return len(files) == 1 and files[0].suffix in (".npy", ".bin")


def prepare(cfg: DataConfig, cache_root: Path, base_dir: Path = Path(".")) -> Corpus:
    """Return the corpus, building and caching it first if this configuration is new."""
    files = source_files(cfg, base_dir)
    key = _cache_key(cfg, files)
    directory = cache_root / key
    remove_stale_builds(cache_root)
    built = not (directory / "meta.json").exists()
    if built:
        _build(cfg, files, directory)
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


def _build(cfg: DataConfig, files: list[Path], directory: Path) -> None:
    start = time.perf_counter()
    text = cfg.train is None and not is_token_array(files)
    docs = _read_documents(files, cfg.max_bytes) if text else None  # read once, also for the vocabulary
    vocab, tokenizer = vocab_size(cfg, files, docs), None
    if cfg.train is not None:
        train, val = (_load_token_array(f, vocab, key) for f, key in zip(files, ("train", "val")))
    else:
        if docs is None:
            tokens = _load_token_array(files[0], vocab)
        else:
            tokens, tokenizer = tokenize.TOKENIZERS[cfg.tokenizer](docs, vocab)
        train, val = split(tokens, cfg.val_fraction) if cfg.split == "pieces" else split_tail(tokens, cfg.val_fraction)
    meta = _token_meta(cfg.source, train, val, vocab, files=len(files), build_s=round(time.perf_counter() - start, 3))
    try:
        _write(directory, train, val, tokenizer, meta)
    except OSError as e:
        raise AblateError(f"cannot write the data cache under {directory.parent}: {e.strerror or e}") from e


def _write(directory: Path, train: np.ndarray, val: np.ndarray, tokenizer, meta: DataMeta) -> None:
    """Write the cache entry into a temporary folder, then rename it into place: a build cut
    off midway leaves no entry, and its folder is removed by a later `prepare`."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f"{BUILDING}{processes.owner()}-"))
    try:
        np.save(tmp / "train.npy", train)
        np.save(tmp / "val.npy", val)
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "meta.json").write_text(meta.model_dump_json(indent=2))
        try:
            os.replace(tmp, directory)
        except OSError:  # another process finished the same build first
            if not (directory / "meta.json").exists():
                raise
    except OSError as e:
        if e.errno is None and (full := full_disk(tmp, train.nbytes + val.nbytes)):  # numpy's short write
            raise full from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_builds(cache_root: Path) -> None:
    """Remove the temporary folders of builds whose process is gone (this host) or that were
    left untouched for an hour (another host)."""
    for folder in cache_root.glob(BUILDING + "*"):
        owner = folder.name[len(BUILDING) :].rpartition("-")[0]
        try:
            old = time.time() - folder.stat().st_mtime > STALE_BUILD_S
        except FileNotFoundError:
            continue  # finished or removed meanwhile
        if processes.gone(owner) or old:
            shutil.rmtree(folder, ignore_errors=True)


def _read_documents(files: list[Path], max_bytes: int | None) -> list[str]:
    docs, total = [], 0
    for f in files:
        raw = f.read_bytes()
        if b"\0" in raw[:8192] or not raw.strip():
            continue  # a binary or empty file inside a text directory
        docs.append(raw.decode("utf-8", errors="replace"))
        total += len(raw)
        if max_bytes is not None and total >= max_bytes:
            break
    if not docs:
        raise AblateError(f"data.source: no text in {len(files)} file(s): each is empty or binary")
    return docs


def _load_token_array(path: Path, vocab_size: int, key: str = "source") -> np.ndarray:
    size = path.stat().st_size
    if size == 0:
        raise AblateError(f"data.{key}: {path} is empty")
    if path.suffix == ".bin" and size % 2:
        raise AblateError(f"data.{key}: {path} holds {size:,} bytes, not a whole number of uint16 tokens")
    try:
        tokens = np.load(path, mmap_mode="r") if path.suffix == ".npy" else np.memmap(path, dtype=np.uint16, mode="r")
    except (ValueError, EOFError, OSError) as e:
        raise AblateError(f"data.{key}: {path} is not a readable .npy array: {first_line(e)}") from None
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise AblateError(f"data.{key}: {path} must hold a 1-D integer token array")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise AblateError(f"data.{key}: {path} holds token ids outside [0, data.vocab_size={vocab_size})")
    return np.asarray(tokens, dtype=token_dtype(vocab_size))


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


def split_tail(tokens: np.ndarray, val_fraction: float):
    """The last val_fraction of the stream is val (nanoGPT's split: data[:int(n·0.9)], data[int(n·0.9):])."""
    cut = int(tokens.size * (1 - val_fraction))
    if cut < 2 or tokens.size - cut < 2:
        raise AblateError(f"data.source: the corpus has only {tokens.size} tokens, too few to split")
    return tokens[:cut], tokens[cut:]


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

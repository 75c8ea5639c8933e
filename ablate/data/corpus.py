"""Corpus → tokenizer → cached token arrays → batches.

Text sources are tokenized by HF `tokenizers`: a byte-level BPE trained to the vocabulary
size (the default), one token per character (`char`, the sorted characters of the text,
as nanoGPT's shakespeare_char encodes them) or per byte (`byte`). Token arrays are used
as they are. The token stream is split into train and val by whole pieces chosen with a
fixed seed (`split: pieces`) or at its tail (`split: tail`, nanoGPT's split); a pair of
arrays (`train:` and `val:`, nanoGPT's train.bin and val.bin) is used as split. The
arrays are written once to a cache directory and memory-mapped from there on.
"""

import contextlib
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
from ablate.data import documents, stream, tokenize
from ablate.data.meta import DataMeta
from ablate.data.stream import fingerprint, unigram_entropy
from ablate.data.tokenize import token_dtype
from ablate.errors import AblateError, first_line

CACHE_VERSION = 2
BUILDING = ".building-"  # + owner + "-" + random: a cache entry being written
TOKENIZING = ".tokens"  # + after the entry's key: its text's tokens so far, kept to resume
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
    elif path.is_dir() and documents.is_dataset_folder(path):
        files = documents.dataset_files(path)
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


def vocab_size(cfg: DataConfig, files: list[Path]) -> int:
    """The model's vocabulary: as given, else 8192 (BPE, token arrays), 256 (bytes) or the number
    of distinct characters of the text (char)."""
    if cfg.vocab_size is not None:
        return cfg.vocab_size
    if cfg.tokenizer == "char":
        found = len(tokenize.characters(_documents(cfg, files)))
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
    """The cache entry: the token stream (text tokenized, or token arrays as they are) split into
    train.npy and val.npy, the tokenizer and meta.json, written a block at a time."""
    start, tokenizer, tokens_folder = time.perf_counter(), None, None
    if cfg.train is not None:
        vocab = vocab_size(cfg, files)
        pair = [_load_token_array(f, vocab, key) for f, key in zip(files, ("train", "val"))]
        splits = lambda folder: tuple(stream.copy_into(folder, n, t) for n, t in zip(("train", "val"), pair))
    else:
        if is_token_array(files):
            vocab = vocab_size(cfg, files)
            tokens = _load_token_array(files[0], vocab)
        else:
            tokens_folder = directory.with_name(directory.name + TOKENIZING)
            with _writing(directory):
                tokens, tokenizer, vocab = _tokenized(cfg, files, tokens_folder)
        splits = lambda folder: split(tokens, cfg.val_fraction, folder, tail=cfg.split == "tail")

    def meta(train: np.ndarray, val: np.ndarray) -> DataMeta:
        return _token_meta(
            cfg.source, train, val, vocab, files=len(files), build_s=round(time.perf_counter() - start, 3)
        )

    with _writing(directory):
        _write(directory, splits, tokenizer, meta)
    if tokens_folder is not None:
        shutil.rmtree(tokens_folder, ignore_errors=True)


@contextlib.contextmanager
def _writing(directory: Path):
    """A failed write under the cache (a full disk) as one line."""
    try:
        yield
    except OSError as e:
        raise AblateError(f"cannot write the data cache under {directory.parent}: {e.strerror or e}") from e


def _documents(cfg: DataConfig, files: list[Path]):
    return documents.read(files, cfg.text_field, cfg.max_bytes)


def _tokenized(cfg: DataConfig, files: list[Path], folder: Path):
    """The text's tokens in `folder` (resumed from what an interrupted build left there), its
    tokenizer and the vocabulary: a tokenizer made on a first pass over the documents, or resumed."""
    from tokenizers import Tokenizer

    saved = folder / "tokenizer.json"
    if saved.exists():
        tokenizer = Tokenizer.from_file(str(saved))
        vocab = cfg.vocab_size or (tokenizer.get_vocab_size() if cfg.tokenizer == "char" else vocab_size(cfg, files))
    else:
        vocab = vocab_size(cfg, files)
        tokenizer = tokenize.TOKENIZERS[cfg.tokenizer](_documents(cfg, files), vocab)
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(saved))
    with _progress() as show:
        tokens = stream.tokenized(
            folder, tokenizer, _documents(cfg, files), token_dtype(vocab), tokenize.separator(tokenizer), show
        )
    if tokens.size == 0:
        raise AblateError(f"data.source: no text in {len(files)} file(s): each is empty or binary")
    return tokens, tokenizer, vocab


@contextlib.contextmanager
def _progress():
    """A line on a terminal's stderr while text is tokenized: documents and tokens so far."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file gets no spinner
        yield lambda docs, tokens: None
        return
    columns = (SpinnerColumn(), TextColumn("tokenizing: {task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting")
        yield lambda docs, tokens: bar.update(task, description=f"{docs:,} documents, {tokens:,} tokens")


def _write(directory: Path, splits, tokenizer, meta) -> None:
    """Write the cache entry into a temporary folder, then rename it into place: a build cut
    off midway leaves no entry, and its folder is removed by a later `prepare`. `splits(folder)`
    writes train.npy and val.npy there; `meta(train, val)` describes them."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f"{BUILDING}{processes.owner()}-"))
    try:
        train, val = splits(tmp)
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "meta.json").write_text(meta(train, val).model_dump_json(indent=2))
        del train, val  # their memory maps closed before the folder moves
        try:
            os.replace(tmp, directory)
        except OSError:  # another process finished the same build first
            if not (directory / "meta.json").exists():
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


def _load_token_array(path: Path, vocab_size: int, key: str = "source") -> stream.TokenFile:
    """A token array file, its ids checked a block at a time, read as the vocabulary's dtype."""
    size = path.stat().st_size
    if size == 0:
        raise AblateError(f"data.{key}: {path} is empty")
    if path.suffix == ".bin" and size % 2:
        raise AblateError(f"data.{key}: {path} holds {size:,} bytes, not a whole number of uint16 tokens")
    cast = token_dtype(vocab_size)
    if path.suffix == ".bin":
        tokens = stream.TokenFile(path, np.uint16, cast=cast)
    else:
        try:
            tokens = stream.TokenFile.npy(path, cast)
        except (ValueError, EOFError, OSError, SyntaxError) as e:
            raise AblateError(f"data.{key}: {path} is not a readable .npy array: {first_line(e)}") from None
        if tokens.npy_layout != (1, False) or not np.issubdtype(tokens.stored, np.integer):
            raise AblateError(f"data.{key}: {path} must hold a 1-D integer token array")
    for block in (stream.TokenFile(path, tokens.stored, tokens.offset, tokens.size)).blocks():
        if block.size and (int(block.min()) < 0 or int(block.max()) >= vocab_size):
            raise AblateError(f"data.{key}: {path} holds token ids outside [0, data.vocab_size={vocab_size})")
    return tokens


def split(tokens: stream.TokenFile, val_fraction: float, folder: Path, tail: bool = False, max_piece: int = 16384):
    """train.npy and val.npy in `folder`: whole pieces of the stream, the val ones picked with a
    fixed seed, or (`tail`) the stream's last val_fraction as val (nanoGPT's split:
    data[:int(n·0.9)], data[int(n·0.9):])."""
    if tail:
        cut = int(tokens.size * (1 - val_fraction))
        if cut < 2 or tokens.size - cut < 2:
            raise AblateError(f"data.source: the corpus has only {tokens.size} tokens, too few to split")
        return stream.copy_into(folder, "train", tokens, 0, cut), stream.copy_into(folder, "val", tokens, cut)
    piece = max(1, min(max_piece, tokens.size // 20))
    n_pieces = tokens.size // piece
    if n_pieces < 2:
        raise AblateError(f"data.source: the corpus has only {tokens.size} tokens, too few to split")
    is_val = np.zeros(n_pieces, dtype=bool)
    is_val[np.random.default_rng(0).choice(n_pieces, size=max(1, round(val_fraction * n_pieces)), replace=False)] = True
    return stream.split_into(folder, tokens, is_val, piece)


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

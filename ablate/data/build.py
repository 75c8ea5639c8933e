"""A corpus's cache entry, written: the token stream (text tokenized, or token arrays as they
are) split into train.npy and val.npy, with the tokenizer and meta.json. The entry is written in a
temporary folder and renamed into place; text's tokens so far are kept beside it, so that a
build cut off midway resumes."""

import contextlib
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ablate.core import processes
from ablate.core.config import DataConfig
from ablate.core.errors import AblateError
from ablate.data import stream, tokenize
from ablate.data.meta import DataMeta
from ablate.data.sources import (
    documents_of,
    is_token_array,
    llmc_header,
    load_token_array,
    own_tokenizer,
    vocab_size,
)
from ablate.data.stream import fingerprint, unigram_entropy
from ablate.data.tokenize import token_dtype

BUILDING = ".building-"  # + owner + "-" + random: a cache entry being written


TOKENIZING = ".tokens"  # + after the entry's key: its text's tokens so far, kept to resume


STALE_BUILD_S = 3600  # another host's unfinished build older than this was cut off


def token_meta(source: str, train: np.ndarray, val: np.ndarray, vocab_size: int, **more) -> DataMeta:
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


def build(cfg: DataConfig, files: list[Path], directory: Path, base_dir: Path) -> None:
    """The cache entry: the token stream (text tokenized, or token arrays as they are) split into
    train.npy and val.npy, the tokenizer and meta.json, written a block at a time. A tokenizer of
    the researcher's own tokenizes the text, or is kept to decode the token arrays."""
    start, tokens_folder = time.perf_counter(), None
    tokenizer = own_tokenizer(cfg, base_dir)
    tail = cfg.split == "tail"
    if cfg.train is not None or is_token_array(files):
        vocab = vocab_size(cfg, files, base_dir)
        tokens, pair = _token_arrays(cfg, files, vocab)
        # llm.c's shards without a val shard: val from the tail, unless the study says how
        tail |= "split" not in cfg.model_fields_set and any(
            llmc_header(f) is not None for f in files if f.suffix == ".bin"
        )
    else:
        tokens_folder, pair = directory.with_name(directory.name + TOKENIZING), None
        with _writing(directory):
            tokens, tokenizer, vocab = _tokenized(cfg, files, tokens_folder, tokenizer, base_dir)
    if pair is None:
        splits = lambda folder: split(tokens, cfg.val_fraction, folder, tail=tail)
    else:
        splits = lambda folder: tuple(stream.copy_into(folder, n, t) for n, t in zip(("train", "val"), pair))

    def meta(train: np.ndarray, val: np.ndarray) -> DataMeta:
        return token_meta(
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


def _token_arrays(cfg: DataConfig, files: list[Path], vocab: int):
    """Token arrays as one stream to split, or as the pair of splits they are already: `train:`
    and `val:`, or llm.c's shards, in order, those named *val* the val split."""
    if cfg.train is not None:
        return None, [load_token_array(f, vocab, key) for f, key in zip(files, ("train", "val"))]
    arrays = {f: load_token_array(f, vocab) for f in files}
    val = [t for f, t in arrays.items() if "val" in f.name]
    if val and len(val) < len(arrays):
        return None, [
            stream.Concatenated([t for f, t in arrays.items() if "val" not in f.name]),
            stream.Concatenated(val),
        ]
    return stream.Concatenated(list(arrays.values())), None


def _tokenized(cfg: DataConfig, files: list[Path], folder: Path, own, base_dir: Path):
    """The text's tokens in `folder` (resumed from what an interrupted build left there), its
    tokenizer and the vocabulary: the researcher's own tokenizer, or one made on a first pass over
    the documents (or resumed)."""
    from tokenizers import Tokenizer

    saved = folder / "tokenizer.json"
    if own is not None:
        tokenizer, vocab = own, vocab_size(cfg, files, base_dir)
    elif saved.exists():
        tokenizer = Tokenizer.from_file(str(saved))
        vocab = cfg.vocab_size or (tokenizer.get_vocab_size() if cfg.tokenizer == "char" else vocab_size(cfg, files))
    else:
        vocab = vocab_size(cfg, files)
        tokenizer = tokenize.TOKENIZERS[cfg.tokenizer](documents_of(cfg, files), vocab)
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(saved))
    try:
        with _progress() as show:
            tokens = stream.tokenized(
                folder, tokenizer, documents_of(cfg, files), token_dtype(vocab), tokenize.separator(tokenizer), show
            )
        if tokens.size == 0:
            raise AblateError(f"data.source: no text in {len(files)} file(s): each is empty or binary")
    except AblateError:
        shutil.rmtree(folder, ignore_errors=True)  # bad input, not a cut: nothing is kept to resume
        raise
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

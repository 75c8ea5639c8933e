"""What a study's `data:` section names, found and checked: the source's files (text, tables,
a saved dataset, token arrays and llm.c's shards), a tokenizer of the researcher's own, and the
vocabulary. Relative paths are taken from the study file's directory."""

import functools
import glob
import os
import sysconfig
from pathlib import Path

import numpy as np

from ablate.core.config import DataConfig
from ablate.core.errors import AblateError, first_line
from ablate.data import documents, stream, tokenize
from ablate.data.tokenize import token_dtype

LLMC_MAGIC, LLMC_VERSION, LLMC_HEADER = 20240520, 1, 256  # llm.c's shards: 256 int32, then uint16 tokens


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


def tokenizer_file(cfg: DataConfig, base_dir: Path) -> Path | None:
    """A tokenizer of the researcher's own: `data.tokenizer` a tokenizer.json, or a transformers
    tokenizer folder holding one; None for the tokenizers ablate makes, and for gpt2."""
    if cfg.tokenizer in tokenize.TOKENIZERS or cfg.tokenizer == tokenize.GPT2:
        return None
    path = _inside(cfg.tokenizer, base_dir, "tokenizer")
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise AblateError(f"data.tokenizer: {path} does not exist (bpe, char, byte, or a tokenizer.json of your own)")
    return path


def own_tokenizer(cfg: DataConfig, base_dir: Path):
    """The tokenizer `data.tokenizer` names that ablate does not make (a file, or gpt2), else None."""
    if cfg.tokenizer == tokenize.GPT2:
        return tokenize.gpt2()
    path = tokenizer_file(cfg, base_dir)
    return None if path is None else _tokenizer_from(path)


def _tokenizer_from(path: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot read
        raise AblateError(f"data.tokenizer: {path} is not a tokenizer.json ({first_line(e)})") from None


def vocab_size(cfg: DataConfig, files: list[Path], base_dir: Path = Path(".")) -> int:
    """The model's vocabulary: as given, else a tokenizer of your own's, 8192 (BPE, token arrays),
    256 (bytes) or the number of distinct characters of the text (char)."""
    if (own := own_tokenizer(cfg, base_dir)) is not None:
        held = own.get_vocab_size()
        if cfg.vocab_size is not None and cfg.vocab_size < held:
            raise AblateError(f"data.vocab_size: {cfg.vocab_size} is smaller than the tokenizer's vocabulary ({held})")
        return cfg.vocab_size or held
    if cfg.vocab_size is not None:
        return cfg.vocab_size
    if cfg.tokenizer == "char":
        found = len(tokenize.characters(documents_of(cfg, files)))
        if found < 2:
            raise AblateError(f"data.source: the text has {found} distinct character(s); nothing to predict")
        return found
    return 256 if cfg.tokenizer == "byte" else 8192


def is_token_array(files: list[Path]) -> bool:
    """Token arrays: one .npy or .bin file, or several (llm.c's shards), used as they are."""
    return all(f.suffix in (".npy", ".bin") for f in files)


def documents_of(cfg: DataConfig, files: list[Path]):
    return documents.read(files, cfg.text_field, cfg.max_bytes)


def load_token_array(path: Path, vocab_size: int, key: str = "source") -> stream.TokenFile:
    """A token array file, its ids checked a block at a time, read as the vocabulary's dtype."""
    size = path.stat().st_size
    if size == 0:
        raise AblateError(f"data.{key}: {path} is empty")
    if path.suffix == ".bin" and size % 2 and llmc_header(path) is None:
        raise AblateError(f"data.{key}: {path} holds {size:,} bytes, not a whole number of uint16 tokens")
    cast = token_dtype(vocab_size)
    if path.suffix == ".bin":
        tokens = _llmc_shard(path, key, cast) or stream.TokenFile(path, np.uint16, cast=cast)
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


def llmc_header(path: Path) -> np.ndarray | None:
    """The header of an llm.c shard (its magic first), None for a headerless .bin."""
    with path.open("rb") as f:
        header = np.fromfile(f, dtype="<i4", count=LLMC_HEADER)
    return header if header.size == LLMC_HEADER and header[0] == LLMC_MAGIC else None


def _llmc_shard(path: Path, key: str, cast) -> stream.TokenFile | None:
    """An llm.c shard's tokens, checked against its header; None for a headerless .bin (nanoGPT's)."""
    header = llmc_header(path)
    if header is None:
        return None
    if header[1] != LLMC_VERSION:
        raise AblateError(f"data.{key}: {path} is an llm.c shard of version {header[1]}; ablate reads version 1")
    count, held = int(header[2]), (path.stat().st_size - 4 * LLMC_HEADER) // 2
    if count != held:
        raise AblateError(f"data.{key}: {path} holds {held:,} tokens; its llm.c header says {count:,} (truncated?)")
    return stream.TokenFile(path, np.uint16, 4 * LLMC_HEADER, count, cast)

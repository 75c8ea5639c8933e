"""Documents, one at a time, from the forms corpora come in: text files, JSON lines (`.jsonl`),
parquet files and Hugging Face datasets saved with `save_to_disk` (their `.arrow` files), the
tables' text in `data.text_field`. They are read in batches, so a corpus larger than memory
streams through.
"""

import json
from collections.abc import Iterator
from pathlib import Path

from ablate.core.errors import AblateError, first_line

TABLES = (".jsonl", ".parquet", ".arrow")
ROWS = 1024  # rows of a table read at once


def is_dataset_folder(path: Path) -> bool:
    """A folder `Dataset.save_to_disk` wrote (or `DatasetDict.save_to_disk`)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def dataset_files(path: Path) -> list[Path]:
    """A saved dataset's `.arrow` files in its own order; a DatasetDict's train split."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if "train" not in splits:
            raise AblateError(
                f"data.source: {path} is a DatasetDict without a train split ({splits}): name a split's folder"
            )
        path = path / "train"
    state = json.loads((path / "state.json").read_text())
    return [path / f["filename"] for f in state.get("_data_files", [])]


def read(files: list[Path], text_field: str, max_bytes: int | None = None) -> Iterator[str]:
    """Every document of the files in order, up to about `max_bytes` of text (the document that
    crosses it is the last)."""
    total = 0
    for path in files:
        for doc in _documents(path, text_field):
            yield doc
            total += len(doc.encode("utf-8", errors="replace"))
            if max_bytes is not None and total >= max_bytes:
                return


def _documents(path: Path, field: str) -> Iterator[str]:
    if path.suffix == ".jsonl":
        return _jsonl(path, field)
    if path.suffix in (".parquet", ".arrow"):
        return _table(path, field)
    return _text(path)


def _text(path: Path) -> Iterator[str]:
    raw = path.read_bytes()
    if b"\0" not in raw[:8192] and raw.strip():  # not a binary or empty file inside a text directory
        yield raw.decode("utf-8", errors="replace")


def _jsonl(path: Path, field: str) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AblateError(f"data.source: {path}:{n}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict) or field not in row:
                raise AblateError(f"data.source: {path}:{n}: the row has no {field!r} field (data.text_field)")
            yield _string(row[field], path, n, field)


def _table(path: Path, field: str) -> Iterator[str]:
    """A parquet file, or an Arrow stream (a saved dataset's shard), a batch of rows at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise AblateError(
            'data.source: parquet files and saved datasets need pyarrow: pip install "ablate[data]"'
        ) from None

    try:
        if path.suffix == ".parquet":
            table = pq.ParquetFile(path)
            names, batches = table.schema_arrow.names, lambda: table.iter_batches(batch_size=ROWS, columns=[field])
        else:
            stream = pa.ipc.open_stream(pa.memory_map(str(path)))
            names, batches = stream.schema.names, lambda: stream
    except (pa.ArrowInvalid, OSError) as e:
        raise AblateError(f"data.source: {path} is not a readable {path.suffix[1:]} file: {first_line(e)}") from None
    if field not in names:
        raise AblateError(f"data.source: {path} has no column {field!r} (data.text_field); its columns: {names}")
    row = 0
    for batch in batches():
        for value in batch.column(batch.schema.get_field_index(field)).to_pylist():
            row += 1
            yield _string(value, path, row, field)


def _string(value, path: Path, row: int, field: str) -> str:
    if not isinstance(value, str):
        raise AblateError(f"data.source: {path}: row {row}'s {field!r} is {type(value).__name__}, not text")
    return value

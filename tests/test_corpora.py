"""The forms corpora come in: the same documents as text files, JSON lines, parquet and a saved
Hugging Face dataset give the same tokens; bad tables are one line; a tokenization cut off
midway resumes; and tokenizing a corpus larger than the stated bound stays under it."""

import json
import re
import textwrap

import numpy as np
import pytest

from ablate.core.config import DataConfig
from ablate.core.errors import AblateError
from ablate.data import stream
from ablate.data.corpus import prepare
from tests.conftest import run_python

DOCS = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * (1 + i % 5) for i in range(400)]


def _texts(folder):
    folder.mkdir()
    for i, doc in enumerate(DOCS):
        (folder / f"{i:04d}.py").write_text(doc)
    return folder


def _jsonl(folder, field="text"):
    folder.mkdir()
    for part in range(2):
        rows = DOCS[part * 200 : (part + 1) * 200]
        (folder / f"part-{part}.jsonl").write_text(
            "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(rows))
        )
    return folder / "*.jsonl"


def _parquet(folder, field="text"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    pq.write_table(pa.table({field: DOCS, "n": list(range(len(DOCS)))}), folder / "docs.parquet", row_group_size=64)
    return folder / "docs.parquet"


def _dataset(folder):
    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(folder), max_shard_size="20KB")
    return folder


@pytest.mark.parametrize("form", [_jsonl, _parquet, _dataset])
def test_every_form_gives_the_tokens_the_same_text_files_give(tmp_path, form):
    def tokens(source):
        return prepare(DataConfig(source=str(source), vocab_size=300), tmp_path / "cache").meta.fingerprint

    assert tokens(form(tmp_path / "table")) == tokens(_texts(tmp_path / "files"))


def test_the_text_field_names_the_column(tmp_path):
    source = _parquet(tmp_path / "p", field="story")
    corpus = prepare(DataConfig(source=str(source), vocab_size=300, text_field="story"), tmp_path / "cache")
    assert corpus.meta.n_train_tokens > 0


def _bad_row(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a"}\n\n{"body": "b"}\n')
    return path


def _bad_column(tmp_path):
    return _parquet(tmp_path / "p", field="body")


def _not_parquet(tmp_path):
    path = tmp_path / "docs.parquet"
    path.write_text("not parquet")
    return path


def _not_text(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": 3}\n')
    return path


@pytest.mark.parametrize(
    "bad, said",
    [
        (_bad_row, "docs.jsonl:3: the row has no 'text' field (data.text_field)"),
        (_bad_column, "docs.parquet has no column 'text' (data.text_field); its columns: ['body', 'n']"),
        (_not_parquet, "docs.parquet is not a readable parquet file"),
        (_not_text, "docs.jsonl: row 1's 'text' is int, not text"),
        (lambda tmp_path: tmp_path / "*.parquet", "matches no files"),
    ],
)
def test_a_bad_table_is_one_line_naming_it(tmp_path, bad, said):
    with pytest.raises(AblateError) as caught:
        prepare(DataConfig(source=str(bad(tmp_path)), vocab_size=300), tmp_path / "cache")
    assert said in str(caught.value) and "\n" not in str(caught.value)
    assert not [p for p in (tmp_path / "cache").glob("*") if p.suffix != ".lock"]  # nothing half-written


def test_a_tokenization_cut_off_midway_resumes_after_its_last_whole_chunk(tmp_path, monkeypatch):
    source, config = _texts(tmp_path / "files"), None
    config = DataConfig(source=str(source), tokenizer="byte")
    whole = prepare(config, tmp_path / "whole").meta.fingerprint
    monkeypatch.setattr(stream, "CHUNK_CHARS", 2000)
    encoded = []
    real = stream._write_chunk

    def cut_after_three(out, tokenizer, batch, *rest):
        if len(encoded) == 3:
            raise KeyboardInterrupt
        encoded.append(len(batch))
        real(out, tokenizer, batch, *rest)

    monkeypatch.setattr(stream, "_write_chunk", cut_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare(config, tmp_path / "cache")
    (partial,) = (tmp_path / "cache").glob("*.tokens")
    assert json.loads((partial / "progress.json").read_text())["docs"] == sum(encoded)
    monkeypatch.setattr(stream, "_write_chunk", real)
    seen = []
    monkeypatch.setattr(
        stream, "_write_chunk", lambda out, tok, batch, *rest: seen.append(batch) or real(out, tok, batch, *rest)
    )
    assert prepare(config, tmp_path / "cache").meta.fingerprint == whole
    assert seen[0][0] == DOCS[sum(encoded)]  # it went on where it stopped
    assert not list((tmp_path / "cache").glob("*.tokens"))  # and cleaned up after itself


BOUND_MB = 200  # docs/data.md states it
MEASURE = textwrap.dedent(
    """\
    import resource, sys
    from pathlib import Path
    from ablate.core.config import DataConfig
    from ablate.data.corpus import prepare
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    corpus = prepare(DataConfig(source=sys.argv[1], tokenizer="byte"), Path(sys.argv[2]))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(corpus.meta.n_train_tokens + corpus.meta.n_val_tokens, grown // 1024)
    """
)


@pytest.mark.slow
def test_tokenizing_a_corpus_larger_than_the_bound_stays_under_it(tmp_path):
    """300 MB of JSON lines (600 MB of tokens): the process grows by less than BOUND_MB."""
    line = json.dumps({"text": "x = [i * i for i in range(10)]  # squares\n" * 40}) + "\n"
    repeats = 300 * 2**20 // len(line)
    with (tmp_path / "big.jsonl").open("w") as f:
        for _ in range(repeats // 1000):
            f.write(line * 1000)
    proc = run_python(MEASURE, str(tmp_path / "big.jsonl"), str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    tokens, grown_mb = map(int, proc.stdout.split())
    assert tokens * 2 > 2 * BOUND_MB * 2**20  # the tokens alone are twice the bound and more
    assert grown_mb < BOUND_MB, f"peak memory grew by {grown_mb} MB"


def _shard(path, tokens, version=1, count=None):
    header = np.zeros(256, dtype="<i4")
    header[:3] = 20240520, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def test_llmc_shards_are_read_in_order_past_their_headers_with_val_from_the_val_shards(tmp_path):
    rng = np.random.default_rng(0)
    parts = {name: rng.integers(0, 300, 5000) for name in ("fw_train_000001", "fw_train_000002", "fw_val_000000")}
    for name, tokens in parts.items():
        _shard(tmp_path / f"{name}.bin", tokens)
    corpus = prepare(DataConfig(source=str(tmp_path / "fw_*.bin"), vocab_size=300), tmp_path / "cache")
    assert np.array_equal(corpus.train, np.concatenate([parts["fw_train_000001"], parts["fw_train_000002"]]))
    assert np.array_equal(corpus.val, parts["fw_val_000000"])
    one = prepare(DataConfig(source=str(tmp_path / "fw_train_000001.bin"), vocab_size=300), tmp_path / "cache")
    assert np.array_equal(one.val, parts["fw_train_000001"][-250:])  # no val shard: val from the tail


@pytest.mark.parametrize(
    "shard, said",
    [
        (lambda p: _shard(p, range(100), count=200), "holds 100 tokens; its llm.c header says 200 (truncated?)"),
        (lambda p: _shard(p, range(100), version=7), "is an llm.c shard of version 7; ablate reads version 1"),
        (lambda p: _shard(p, [299, 300]), "holds token ids outside [0, data.vocab_size=300)"),
    ],
)
def test_a_bad_llmc_shard_is_one_line(tmp_path, shard, said):
    shard(tmp_path / "s.bin")
    with pytest.raises(AblateError, match=re.escape(said)):
        prepare(DataConfig(source=str(tmp_path / "s.bin"), vocab_size=300), tmp_path / "cache")


def _own_tokenizer(folder):
    """A tokenizer of the researcher's own, as transformers saves one (a folder with tokenizer.json)."""
    from ablate.data import tokenize

    folder.mkdir()
    tokenize.bpe(DOCS, 280).save(str(folder / "tokenizer.json"))
    return folder


def test_a_tokenizer_of_your_own_tokenizes_the_text_and_gives_the_vocabulary(tmp_path):
    from tokenizers import Tokenizer

    own = _own_tokenizer(tmp_path / "tok")
    source = _jsonl(tmp_path / "docs")
    corpus = prepare(DataConfig(source=str(source), tokenizer=str(own)), tmp_path / "cache")
    mine = Tokenizer.from_file(str(own / "tokenizer.json"))
    assert corpus.vocab_size == mine.get_vocab_size() == 280
    assert Tokenizer.from_file(str(corpus.tokenizer_path)).to_str() == mine.to_str()
    ids = mine.encode(DOCS[0]).ids
    stream_ids = np.concatenate([corpus.train, corpus.val]).tolist()
    assert any(stream_ids[i : i + len(ids)] == ids for i in range(2000))
    with pytest.raises(AblateError, match=r"data.vocab_size: 100 is smaller than the tokenizer's vocabulary \(280\)"):
        prepare(DataConfig(source=str(source), tokenizer=str(own), vocab_size=100), tmp_path / "cache")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(AblateError, match="junk.json is not a tokenizer.json"):
        prepare(DataConfig(source=str(source), tokenizer=str(tmp_path / "junk.json")), tmp_path / "cache")


FORMS = {
    "llm.c shards": lambda tmp_path: _shards_of(tmp_path / "shards"),
    "parquet": lambda tmp_path: _parquet(tmp_path / "p"),
    "jsonl glob": lambda tmp_path: _jsonl(tmp_path / "j"),
    "saved dataset": lambda tmp_path: _dataset(tmp_path / "d"),
}


def _shards_of(folder):
    """The documents tokenized by the researcher's tokenizer into llm.c shards, as llm.c's own
    data scripts write them (a val shard first)."""
    from tokenizers import Tokenizer

    folder.mkdir()
    mine = Tokenizer.from_file(str(folder.parent / "tok" / "tokenizer.json"))
    eot = mine.token_to_id("<|endoftext|>")
    tokens = [t for doc in DOCS for t in [eot, *mine.encode(doc).ids]]
    _shard(folder / "docs_val_000000.bin", tokens[:3000])
    _shard(folder / "docs_train_000001.bin", tokens[3000:9000])
    _shard(folder / "docs_train_000002.bin", tokens[9000:])
    return folder / "*.bin"


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_each_form_trains_a_study_end_to_end_with_its_own_tokenizer(tmp_path, form, capsys, own_store):
    from ablate.cli import main
    from tests.conftest import write_study
    from tests.test_end_to_end import store_of, trial_runs

    own = _own_tokenizer(tmp_path / "tok")
    source = FORMS[form](tmp_path)
    study = write_study(
        tmp_path,
        f"""\
        name: forms
        data: {{source: "{source}", tokenizer: "{own}"}}
        model: {{mixer: gla, context: 32, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn_dim: 64}}
        train: {{steps: 20, batch_size: 8, warmup: 2, eval_every: 10, eval_batches: 2}}
        variants: [{{name: gla}}]
        """,
    )
    assert main(["run", str(study), "--results", str(tmp_path / "results")]) == 0
    runs = trial_runs(store_of(tmp_path / "results"), "forms")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert runs.iloc[0]["params.model.vocab_size"] == "280"
    capsys.readouterr()
    assert (
        main(
            [
                "sample",
                runs.iloc[0]["run_id"],
                "--prompt",
                "def ",
                "--tokens",
                "5",
                "--results",
                str(tmp_path / "results"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("def ")  # the run decodes with the researcher's tokenizer


R50K_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # GPT-2's, as tiktoken has it
)


def _tiktoken_like_gpt2():
    """A tiktoken encoding built as GPT-2's is (bytes first, then merges in rank order, GPT-2's
    pattern, <|endoftext|> last), from merges learned on DOCS: GPT-2's own table is a download."""
    import tiktoken

    from ablate.data import tokenize

    learned = json.loads(tokenize.bpe(DOCS, 400).to_str())["model"]["merges"]
    back = {c: b for b, c in enumerate(tokenize._byte_alphabet())}
    as_bytes = lambda text: bytes(back[c] for c in text)
    ranks = {bytes([b]): b for b in range(256)}
    for merge in learned:
        a, b = merge if isinstance(merge, list) else merge.split(" ")
        ranks.setdefault(as_bytes(a) + as_bytes(b), len(ranks))
    return tiktoken.Encoding(
        "gpt2-like", pat_str=R50K_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)}
    )


def test_a_tiktoken_bpe_becomes_a_tokenizer_giving_the_same_ids():
    from ablate.data import tokenize

    encoding = _tiktoken_like_gpt2()
    converted = tokenize.from_tiktoken(encoding)
    texts = [*DOCS[:50], "Hello, world! It's 2026 — déjà vu?\n\n  indented\tlines", "<|endoftext|>"]
    for text in texts:
        assert converted.encode(text).ids == encoding.encode(text, allowed_special="all"), text
        assert converted.decode(encoding.encode(text, allowed_special="all"), skip_special_tokens=False) == text


def test_gpt2_through_tiktoken_tokenizes_the_corpus_and_offline_it_is_one_line(tmp_path, monkeypatch):
    import tiktoken

    from ablate.data import tokenize

    encoding = _tiktoken_like_gpt2()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: encoding)
    tokenize.gpt2.cache_clear()
    corpus = prepare(DataConfig(source=str(_jsonl(tmp_path / "j")), tokenizer="gpt2"), tmp_path / "cache")
    assert corpus.vocab_size == encoding.n_vocab
    stream_ids = np.concatenate([corpus.train, corpus.val]).tolist()
    first = encoding.encode(DOCS[0])
    assert any(stream_ids[i : i + len(first)] == first for i in range(2000))

    def offline(name):
        raise ConnectionError("Max retries exceeded with url: /gpt-2/encodings/main/vocab.bpe")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    tokenize.gpt2.cache_clear()
    with pytest.raises(
        AblateError, match=r"^data.tokenizer: gpt2: tiktoken cannot load GPT-2's table \(ConnectionError\)"
    ):
        prepare(DataConfig(source=str(tmp_path / "j" / "*.jsonl"), tokenizer="gpt2", vocab_size=60000), tmp_path / "c2")
    tokenize.gpt2.cache_clear()


def test_a_vocabulary_past_uint16_is_stored_as_uint32(tmp_path):
    """A tokenizer of 70,000 words: ids past 65,535 would wrap in uint16 files."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"w{i}": i for i in range(70_000)}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "words.json"))
    (tmp_path / "docs.jsonl").write_text(
        "".join(
            json.dumps({"text": " ".join(f"w{(i * 7919) % 70_000}" for i in range(j, j + 50))}) + "\n"
            for j in range(0, 20_000, 50)
        )
    )
    corpus = prepare(
        DataConfig(source=str(tmp_path / "docs.jsonl"), tokenizer=str(tmp_path / "words.json")), tmp_path / "c"
    )
    assert corpus.vocab_size == 70_000 and corpus.train.dtype == np.uint32
    assert int(np.concatenate([corpus.train, corpus.val]).max()) > 65_535


TWICE = """
import sys
from pathlib import Path
from ablate.core.config import DataConfig
from ablate.data import stream
from ablate.data.corpus import prepare
stream.CHUNK_CHARS = 500  # many chunks, so that the two builds overlap
print(prepare(DataConfig(source=sys.argv[1], tokenizer="byte"), Path(sys.argv[2])).meta.fingerprint)
"""


def test_two_processes_building_one_entry_at_once_both_get_it(tmp_path):
    """The second waits for the first's build, then reads its entry (no tokens removed under it)."""
    import subprocess
    import sys

    from tests.conftest import clean_env

    source = _texts(tmp_path / "files")
    args = [sys.executable, "-c", TWICE, str(source), str(tmp_path / "cache")]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (
        outs[0][0]
        == outs[1][0]
        == prepare(DataConfig(source=str(source), tokenizer="byte"), tmp_path / "cache").meta.fingerprint + "\n"
    )

"""Corpus preparation, caching, splitting and batching."""

import numpy as np
import pytest
import torch

from ablate.core.config import DataConfig
from ablate.core.errors import AblateError
from ablate.data.build import split
from ablate.data.corpus import Batches, prepare, val_batches


def test_text_corpus_is_built_once_then_loaded_from_cache(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 40)
    cfg = DataConfig(source=str(docs), vocab_size=300)
    first = prepare(cfg, tmp_path / "cache")
    again = prepare(cfg, tmp_path / "cache")
    assert first.built and not again.built
    assert first.meta.fingerprint == again.meta.fingerprint
    assert (first.directory / "tokenizer.json").exists()
    assert first.train.dtype == np.uint16 and int(first.train.max()) < 300
    assert first.meta.n_train_tokens > 10 * first.meta.n_val_tokens > 0
    assert 0 < first.meta.unigram_entropy < np.log(300)


def test_relative_sources_are_read_from_the_study_directory(tmp_path):
    (tmp_path / "corpus.txt").write_text("some words and more words " * 2000)
    corpus = prepare(DataConfig(source="corpus.txt", vocab_size=300), tmp_path / "cache", base_dir=tmp_path)
    assert corpus.meta.files == 1


def test_token_arrays_are_used_as_they_are(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 1000, size=50_000).astype(np.int32)
    np.save(tmp_path / "tokens.npy", tokens)
    corpus = prepare(DataConfig(source=str(tmp_path / "tokens.npy"), vocab_size=1000), tmp_path / "cache")
    assert corpus.train.size + corpus.val.size == 50_000  # 20 whole pieces of 2,500
    assert not (corpus.directory / "tokenizer.json").exists()
    assert set(np.unique(np.concatenate([corpus.train, corpus.val]))) <= set(np.unique(tokens))


def test_bin_files_hold_uint16_tokens(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 600, size=40_000).astype(np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    corpus = prepare(DataConfig(source=str(tmp_path / "train.bin"), vocab_size=600), tmp_path / "cache")
    assert np.array_equal(np.sort(np.concatenate([corpus.train, corpus.val])), np.sort(tokens))


def test_token_ids_beyond_the_vocabulary_are_refused(tmp_path):
    np.save(tmp_path / "tokens.npy", np.arange(5000))
    with pytest.raises(AblateError, match="outside"):
        prepare(DataConfig(source=str(tmp_path / "tokens.npy"), vocab_size=1000), tmp_path / "cache")


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(AblateError, match="does not exist"):
        prepare(DataConfig(source="nope.txt"), tmp_path / "cache", base_dir=tmp_path)


def test_split_is_deterministic_and_by_whole_pieces(tmp_path):
    from ablate.data.stream import TokenFile

    np.save(tmp_path / "tokens.npy", np.arange(100_000, dtype=np.uint32))
    tokens = TokenFile.npy(tmp_path / "tokens.npy")
    for folder in "ab":
        (tmp_path / folder).mkdir()
        split(tokens, 0.1, tmp_path / folder)
    train, val, train2, val2 = (np.load(tmp_path / f / f"{n}.npy") for f in "ab" for n in ("train", "val"))
    assert np.array_equal(train, train2) and np.array_equal(val, val2)
    assert not set(train.tolist()) & set(val.tolist())
    assert abs(val.size / (train.size + val.size) - 0.1) < 0.03


def test_batches_follow_the_seed(corpus):
    a = [next(Batches(corpus.train, 16, 4, seed=3))[0] for _ in range(2)]
    b = next(Batches(corpus.train, 16, 4, seed=4))[0]
    assert a[0].equal(a[1]) and not a[0].equal(b)
    x, y = next(Batches(corpus.train, 16, 4, seed=0))
    assert x.shape == y.shape == (4, 16) and x[:, 1:].equal(y[:, :-1])
    assert all(p[0].equal(q[0]) for p, q in zip(val_batches(corpus.val, 16, 4, 3), val_batches(corpus.val, 16, 4, 3)))


def test_batches_gathered_on_a_device_are_the_host_batches(corpus):
    """The GPU path (tokens resident on the device, offsets sent over) draws the same windows;
    on a CPU-only machine it runs with the CPU as its device."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    host, resident = Batches(corpus.train, 16, 4, seed=5), Batches(corpus.train, 16, 4, seed=5, device=device)
    for _ in range(3):
        (hx, hy), (dx, dy) = next(host), next(resident)
        assert dx.device.type == device and dx.dtype == hx.dtype
        assert hx.equal(dx.cpu()) and hy.equal(dy.cpu())


TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. Ça va? ½\n" * 400


def _decode(corpus, ids) -> str:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(corpus.tokenizer_path)).decode([int(i) for i in ids])


def test_char_tokens_are_the_texts_sorted_characters_and_the_tail_is_val(tmp_path):
    """As nanoGPT's shakespeare_char: id i is the i-th sorted distinct character, the vocabulary is
    exactly those characters, and val is the stream's last 10% (data[int(n·0.9):])."""
    (tmp_path / "t.txt").write_text(TEXT)
    cfg = DataConfig(source=str(tmp_path / "t.txt"), tokenizer="char", split="tail", val_fraction=0.1)
    corpus = prepare(cfg, tmp_path / "cache")
    chars = sorted(set(TEXT))
    expected = np.array([chars.index(c) for c in TEXT])
    n = len(TEXT)
    assert corpus.vocab_size == corpus.meta.vocab_size == len(chars)
    assert np.array_equal(corpus.train, expected[: int(n * 0.9)]) and np.array_equal(
        corpus.val, expected[int(n * 0.9) :]
    )
    assert _decode(corpus, corpus.val[:200]) == TEXT[int(n * 0.9) :][:200]


def test_byte_tokens_are_the_utf8_bytes(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    corpus = prepare(DataConfig(source=str(tmp_path / "t.txt"), tokenizer="byte", split="tail"), tmp_path / "cache")
    raw = np.frombuffer(TEXT.encode(), dtype=np.uint8)
    assert corpus.vocab_size == 256
    assert np.array_equal(np.concatenate([corpus.train, corpus.val]), raw)
    assert _decode(corpus, corpus.train[:300]) == TEXT.encode()[:300].decode()


def test_a_train_and_val_pair_is_used_as_split(tmp_path):
    """nanoGPT's layout: train.bin and val.bin of uint16, each used whole."""
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 65, 30_000).astype(np.uint16), rng.integers(0, 65, 3_000).astype(np.uint16)
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    corpus = prepare(DataConfig(train="train.bin", val="val.bin", vocab_size=65), tmp_path / "cache", tmp_path)
    assert np.array_equal(corpus.train, train) and np.array_equal(corpus.val, val) and corpus.vocab_size == 65


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"train": "a.bin"}, "give both train and val"),
        ({"source": "x.txt", "train": "a.bin", "val": "b.bin"}, "either source or train and val"),
        ({"tokenizer": "bpe", "vocab_size": 100}, "a BPE needs vocab_size > 256"),
        ({"tokenizer": "byte", "vocab_size": 100}, "byte tokenizer needs vocab_size ≥ 256"),
        ({"source": "t.npy", "tokenizer": "char"}, "applies to text"),
    ],
)
def test_inconsistent_data_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**settings)


def test_a_char_vocabulary_smaller_than_the_text_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    with pytest.raises(AblateError, match="distinct characters, more than 10"):
        prepare(DataConfig(source=str(tmp_path / "t.txt"), tokenizer="char", vocab_size=10), tmp_path / "cache")


def test_a_text_of_one_character_is_refused_as_data_not_as_a_vocab_size(tmp_path):
    (tmp_path / "t.txt").write_text("a" * 1000)
    with pytest.raises(AblateError, match=r"^data.source: the text has 1 distinct character"):
        prepare(DataConfig(source=str(tmp_path / "t.txt"), tokenizer="char"), tmp_path / "cache")


def test_builds_cut_off_by_a_dead_process_are_removed_by_the_next_prepare(tmp_path):
    import os
    import socket
    import subprocess
    import time

    from ablate.data.build import BUILDING

    dead = subprocess.Popen(["true"])
    dead.wait()
    host, cache = socket.gethostname(), tmp_path / "cache"
    folders = {
        "dead": cache / f"{BUILDING}{host}:{dead.pid}-abc",
        "alive": cache / f"{BUILDING}{host}:{os.getpid()}-def",  # a build in progress: kept
        "other host, recent": cache / f"{BUILDING}elsewhere:1-ghi",  # cannot be checked: kept an hour
        "other host, old": cache / f"{BUILDING}elsewhere:2-jkl",
    }
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "train.npy").write_bytes(b"\0" * 10)
    hours_ago = time.time() - 2 * 3600
    os.utime(folders["other host, old"], (hours_ago, hours_ago))
    np.save(tmp_path / "tokens.npy", np.arange(5000) % 100)
    prepare(DataConfig(source=str(tmp_path / "tokens.npy"), vocab_size=100), cache)
    assert {k for k, f in folders.items() if f.exists()} == {"alive", "other host, recent"}

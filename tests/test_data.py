"""Corpus preparation, caching, splitting and batching."""

import numpy as np
import pytest
import torch

from ablate.data import Batches, DataConfig, prepare, split, val_batches
from ablate.errors import AblateError


def test_text_corpus_is_built_once_then_loaded_from_cache(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 40)
    cfg = DataConfig(source=str(docs), vocab_size=300)
    first = prepare(cfg, tmp_path / "cache")
    again = prepare(cfg, tmp_path / "cache")
    assert first.built and not again.built
    assert first.meta["fingerprint"] == again.meta["fingerprint"]
    assert (first.directory / "tokenizer.json").exists()
    assert first.train.dtype == np.uint16 and int(first.train.max()) < 300
    assert first.meta["n_train_tokens"] > 10 * first.meta["n_val_tokens"] > 0
    assert 0 < first.meta["unigram_entropy"] < np.log(300)


def test_relative_sources_are_read_from_the_study_directory(tmp_path):
    (tmp_path / "corpus.txt").write_text("some words and more words " * 2000)
    corpus = prepare(DataConfig(source="corpus.txt", vocab_size=300), tmp_path / "cache", base_dir=tmp_path)
    assert corpus.meta["files"] == 1


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


def test_split_is_deterministic_and_by_whole_pieces():
    tokens = np.arange(100_000, dtype=np.uint32)
    train, val = split(tokens, 0.1)
    train2, val2 = split(tokens, 0.1)
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

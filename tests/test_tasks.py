"""Synthetic tasks: shapes, masks and seeds, an oracle that answers every scored position, and a
study that runs on one."""

import json

import numpy as np
import pytest
import torch

from ablate import study as study_mod
from ablate.errors import AblateError
from ablate.tasks import IGNORE, TASKS, TaskConfig, TaskData, generate, memorization_table


def _oracle(cfg: TaskConfig, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The answer at every scored position, read from the context (or, for memorization, from
    the table): what a perfect model of the task predicts."""
    out = torch.full_like(y, IGNORE)
    for i, p in (y != IGNORE).nonzero().tolist():
        row = x[i].tolist()
        if cfg.task == "mqar":  # the pair section: keys at even positions below 2P
            q = row[: 2 * cfg.num_kv_pairs : 2].index(row[p]) * 2
            out[i, p] = row[q + 1]
        elif cfg.task in ("in_context_recall", "noisy_recall"):  # the key's last earlier occurrence
            q = max(j for j in range(p) if row[j] == row[p])
            out[i, p] = row[q + 1]
        elif cfg.task == "memorization":
            out[i, p] = int(memorization_table(cfg)[row[p]])
        elif cfg.task == "fuzzy_recall":  # pairs of key and value motifs follow each other from 0
            size = cfg.k_motif_size + cfg.v_motif_size
            start, j = (p + 1) // size * size, (p + 1) % size - cfg.k_motif_size
            motif = row[start : start + cfg.k_motif_size]
            earlier = next(t for t in range(0, start, size) if row[t : t + cfg.k_motif_size] == motif)
            out[i, p] = row[earlier + cfg.k_motif_size + j]
        else:  # selective_copy: the scattered tokens before the copy signal, in order
            signal = row.index(cfg.vocab - 1)
            content = [t for t in row[:signal] if t != 0]
            out[i, p] = content[p - signal]
    return out


@pytest.mark.parametrize("task", TASKS)
def test_each_task_is_answered_exactly_by_its_oracle(task):
    cfg = TaskConfig(task=task, vocab=64, seq_len=48, n_val=64)
    x, y = generate(cfg, np.random.default_rng(0), 64)
    assert x.shape == y.shape == (64, 48) and x.dtype == y.dtype == torch.int64
    scored = y != IGNORE
    assert scored.any(dim=1).float().mean() > 0.5  # most examples score something
    assert scored.float().mean() < 0.6  # and a task scores only its answers
    assert 0 <= int(x.min()) and int(x.max()) < cfg.vocab and int(y[scored].max()) < cfg.vocab
    assert torch.equal(_oracle(cfg, x, y), y)
    assert torch.equal(x[:, 1:][scored[:, :-1]], y[:, :-1][scored[:, :-1]])  # targets are the next tokens


@pytest.mark.parametrize("task", TASKS)
def test_tasks_follow_their_seed(task):
    cfg = TaskConfig(task=task, seq_len=32)
    a, b = generate(cfg, np.random.default_rng(1), 8), generate(cfg, np.random.default_rng(1), 8)
    c = generate(cfg, np.random.default_rng(2), 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_mqar_queries_every_key_once_after_its_pairs():
    cfg = TaskConfig(task="mqar", vocab=64, seq_len=32, num_kv_pairs=4)
    x, y = generate(cfg, np.random.default_rng(0), 16)
    assert ((y != IGNORE).sum(dim=1) == 4).all()
    for row, target in zip(x, y):
        keys = row[:8:2]
        assert (keys < 32).all() and (row[1:8:2] >= 32).all() and len(set(keys.tolist())) == 4
        assert sorted(row[target != IGNORE].tolist()) == sorted(keys.tolist())


def test_training_batches_are_fresh_and_val_is_fixed():
    data = TaskData(TaskConfig(task="mqar", n_val=40))
    batches = data.batches(64, 8, seed=0)
    first, second = next(batches), next(batches)
    assert first[0].shape == (8, 64) and not torch.equal(first[0], second[0])
    assert torch.equal(next(data.batches(64, 8, seed=0))[0], first[0])  # a trial's seed fixes its stream
    val = data.val_batches(64, 16, n_batches=1)
    assert [len(x) for x, _ in val] == [16, 16, 8]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(val, data.val_batches(64, 16, 1)))
    fixed = TaskData(TaskConfig(task="mqar", n_train=5)).batches(64, 32, seed=0)
    assert len({tuple(r.tolist()) for r in next(fixed)[0]}) <= 5


def test_a_task_sets_the_models_vocabulary_and_context(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\ndata: {task: mqar, vocab: 32, seq_len: 24, num_kv_pairs: 3}\n"
        "model: {d_model: 16, n_heads: 2, qkv_dim: 16, ffn: false}\nvariants:\n  - {name: a, model: {mixer: mha}}\n"
    )
    (trial,) = study_mod.load(path).trials
    assert (trial.model["vocab_size"], trial.model["context"]) == (32, 24)


@pytest.mark.parametrize(
    "data, message",
    [
        ("{task: mqar, seq_len: 8, num_kv_pairs: 4}", "s.yaml:2: data: mqar needs seq_len ≥ 4·num_kv_pairs"),
        ("{task: mqar, num_kv_pais: 4}", "s.yaml:2: data.num_kv_pais: unknown key (did you mean 'num_kv_pairs'?)"),
        ("{task: recall}", "s.yaml:2: data.task"),
        (
            "{task: mqar, seq_len: 32}\nmodel: {context: 64}",
            "s.yaml:3: model.context: a task sets it (data.seq_len 32)",
        ),
    ],
)
def test_bad_task_settings_name_the_key(tmp_path, data, message):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\ndata: {data}\nvariants:\n  - {{name: a, model: {{mixer: mha}}}}\n")
    with pytest.raises(AblateError) as e:
        study_mod.load(path)
    assert message in str(e.value)


MQAR_STUDY = """\
name: tiny-mqar
data: {task: mqar, vocab: 64, seq_len: 32, num_kv_pairs: 4, n_val: 256}
model: {d_model: 128, n_layers: 2, n_heads: 2, qkv_dim: 128, ffn: false}
train: {steps: 300, batch_size: 64, lr: 1.0e-3, warmup: 20, eval_every: 100}
variants:
  - {name: mha, model: {mixer: mha}}
  - {name: self-only, model: {mixer: mha, mixer_options: {window: 1}}}
"""


def test_mha_learns_mqar_and_a_model_that_cannot_match_content_does_not(tmp_path, capsys):
    """Through `ablate run`: mha reaches ≥ 0.9 val_accuracy in 300 steps; the same model with its
    attention cut to each token itself (window 1) cannot look keys up and stays below 0.5."""
    from ablate.cli import main

    path = tmp_path / "mqar.yaml"
    path.write_text(MQAR_STUDY)
    store = ["--results", str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main(["run", str(path), *store]) == 0
    capsys.readouterr()
    assert main(["compare", "--metric", "val_accuracy", "--format", "json", "--no-report", *store]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mha"]["mean"] >= 0.9 and rows["self-only"]["mean"] < 0.5
    run_id = rows_run_id(tmp_path / "mlflow.db", "mha")
    assert main(["sample", run_id, "--prompt", "3 40 5 41", "--tokens", "4", "--json", *store]) == 0
    assert len(json.loads(capsys.readouterr().out)["generated_ids"]) == 4  # token ids: a task has no tokenizer


def rows_run_id(db, variant: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("tiny-mqar").experiment_id])
    return next(
        r.info.run_id for r in runs if r.data.tags.get("ablate.variant") == variant and "ablate.role" not in r.data.tags
    )

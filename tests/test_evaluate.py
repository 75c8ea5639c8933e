"""`ablate import strawberry` and `ablate eval`: a published leaking checkpoint, recorded and
measured honestly."""

import json

import pytest
import torch
from seed_checkpoints import PUBLISHED, seed_checkpoint

SMALL = {**PUBLISHED, "vocab_size": 20, "n_embd": 8, "n_qkv": 12, "n_ffn": 16, "n_head": 2}


def test_import_then_eval_gives_the_honest_and_the_teacher_forced_loss_of_the_leaking_seed(tmp_path, capsys):
    """A seed checkpoint (scope batch) imported and evaluated on a token array: the audit finds the
    leak, and the prefix loss (each position from its own prefix) is reported beside the
    teacher-forced loss; both are logged as an evaluation run nested under the import."""
    import mlflow
    import numpy as np

    from ablate.cli import main

    hyper = {**SMALL, "block_size": 32}
    checkpoint = seed_checkpoint(hyper, dtype=torch.float32)
    checkpoint["stats"] = {"step": 1000, "loss": {"train": [torch.tensor(3.5)], "val": [torch.tensor(3.8)]}}
    torch.save(checkpoint, tmp_path / "seed.strawberry")
    tokens = np.random.default_rng(0).integers(0, 20, 200_000).astype(np.uint16)
    np.save(tmp_path / "tokens.npy", tokens)
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"  # explicit: another test may have set MLFLOW_TRACKING_URI
    store = ["--results", str(tmp_path / "results"), "--tracking-uri", uri]

    assert main(["import", "strawberry", str(tmp_path / "seed.strawberry"), *store]) == 0
    run_id = capsys.readouterr().out.split(" as run ")[1].split()[0]
    assert main(["eval", run_id, *store]) == 2
    assert "give --data" in capsys.readouterr().err
    assert main(["eval", run_id, "--data", str(tmp_path / "seed.strawberry"), *store]) == 2
    assert "give a study YAML" in capsys.readouterr().err

    eval_args = ["eval", run_id, "--data", str(tmp_path / "tokens.npy"), "--batch-size", "4", "--batches", "2"]
    assert main([*eval_args, *store]) == 0
    printed = capsys.readouterr()
    text = printed.out
    assert "Downloading artifacts" not in printed.err  # no MLflow progress bars around the answer
    assert "audit: LEAKS" in text and "prefix_val_loss" in text
    assert main([*eval_args, "--json", *store]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["max_leak"] > 1e-3
    assert out["prefix_val_loss"] != pytest.approx(out["val_loss_at_prefix_positions"], abs=1e-3)

    client = mlflow.MlflowClient(uri)
    imported = client.get_run(run_id)
    assert imported.data.tags["ablate.role"] == "import" and imported.data.tags["ablate.causal"] == "false"
    assert imported.data.metrics == pytest.approx({"reported_train_loss": 3.5, "reported_val_loss": 3.8})
    assert imported.data.params["model.mixer_options.scope"] == "batch"
    evaluation = client.get_run(out["evaluation_run_id"])
    assert evaluation.data.tags["mlflow.parentRunId"] == run_id and evaluation.data.tags["ablate.causal"] == "false"
    assert evaluation.data.metrics["prefix_val_loss"] == out["prefix_val_loss"]


def test_import_of_a_damaged_checkpoint_is_a_one_line_error(tmp_path, capsys):
    from ablate.cli import main

    checkpoint = seed_checkpoint(SMALL)
    checkpoint["model"].pop("blocks.0.retain.oa.weight")
    torch.save(checkpoint, tmp_path / "damaged.pt")
    assert main(["import", "strawberry", str(tmp_path / "damaged.pt"), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "lacks 'blocks.0.retain.oa.weight'" in err and len(err.strip().splitlines()) == 1


def _nan_weights(checkpoint):
    checkpoint["model"]["blocks.0.retain.oa.weight"][0, 0] = float("nan")
    return checkpoint


def _huge_vocabulary(checkpoint):
    checkpoint["hyperparams"]["vocab_size"] = 10**9  # the weights stay small: the shapes disagree
    return checkpoint


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda c: "hello\n", "(not a torch.save file?)"),
        (_nan_weights, "holds NaN or inf"),
        (_huge_vocabulary, "its hyperparameters give (1000000000,"),
    ],
    ids=["text file", "NaN weights", "vocabulary of 1e9"],
)
def test_a_checkpoint_that_is_no_model_is_one_line_and_writes_nothing(damage, said, tmp_path, capsys):
    from ablate.cli import main

    damaged = damage(seed_checkpoint(SMALL))
    path = tmp_path / "bad.pt"
    path.write_text(damaged) if isinstance(damaged, str) else torch.save(damaged, path)
    assert main(["import", "strawberry", str(path), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_the_audit_of_non_finite_logits_is_refused_not_reported_causal():
    import ablate
    from ablate.core.errors import AblateError
    from ablate.inference import audit

    shape = {"mixer": "mha", "vocab_size": 32, "context": 16, "d_model": 16, "n_layers": 1, "n_heads": 2}
    model = ablate.build_model({**shape, "qkv_dim": 16, "ffn_dim": 32})
    with torch.no_grad():
        model.embed.weight[3, 0] = float("nan")  # one token's row: the logits of some positions only
    with pytest.raises(AblateError, match="logits are NaN or inf"):
        audit.model_leak(model)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_eval_on_a_task_longer_than_the_models_context_is_one_line(tmp_path, capsys, pos):
    """A task whose seq_len (64) exceeds the model's context (32): one line naming both, exit 2,
    nothing logged (an IndexError from learned positions, a RuntimeError from rotary before)."""
    from ablate.cli import main
    from tests.conftest import write_study

    one = f"""\
name: short
data: {{task: mqar, vocab: 64, seq_len: 32, num_kv_pairs: 4, n_val: 64}}
model: {{mixer: mha, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, pos: {pos}}}
train: {{steps: 2, batch_size: 8, warmup: 1, eval_every: 2}}
variants: [{{name: mha, model: {{mixer: mha}}}}]
"""
    store = ["--results", str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main(["run", str(write_study(tmp_path, one)), *store]) == 0
    long = write_study(tmp_path, one.replace("seq_len: 32", "seq_len: 64"), "long.yaml")
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("short").experiment_id
    before = client.search_runs([exp_id])
    (run,) = [r for r in before if "ablate.role" not in r.data.tags]
    capsys.readouterr()
    assert main(["eval", run.info.run_id, "--data", str(long), *store]) == 2
    err = capsys.readouterr().err
    assert "sequences are 64 tokens, longer than the model's context 32" in err and len(err.strip().splitlines()) == 1
    assert len(client.search_runs([exp_id])) == len(before)  # nothing logged


def test_every_import_format_is_an_importer_the_command_offers():
    """`ablate import KIND` offers exactly the formats of ablate.importers, each read by a module
    answering the Importer protocol: `imported(path) -> Imported`."""
    import inspect

    from ablate import importers
    from ablate.cli import parser

    (sub,) = [a for a in parser()._actions if a.dest == "command"]
    (kind,) = [a for a in sub.choices["import"]._actions if a.dest == "kind"]
    assert tuple(kind.choices) == importers.KINDS
    for name in importers.KINDS:
        imported = importers.importer(name).imported
        assert list(inspect.signature(imported).parameters) == ["path"]
        assert inspect.signature(imported).return_annotation in (importers.Imported, "Imported")

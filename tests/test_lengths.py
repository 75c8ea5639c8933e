"""Loss past the training length (`ablate eval --contexts`, a study's `eval.contexts`): at the
training length it is the evaluation's own val_loss; its position ranges average to it; every
shipped mixer runs past its context unless a learned table ends, and there it is not measured."""

import json

import numpy as np
import pytest
import torch

import ablate
from ablate.cli import main
from ablate.core.errors import AblateError
from ablate.inference import lengths
from ablate.mixers import registry
from tests.conftest import TINY_DATA, run_ablate, write_study
from tests.test_end_to_end import store_of, trial_runs

SHIPPED = [n for n in ablate.variants() if registry.mixer_class(n).__module__.startswith("ablate.architectures.")]
SHAPE = {"vocab_size": 64, "context": 64, "d_model": 32, "n_layers": 1, "n_heads": 2, "qkv_dim": 32}
VAL = np.random.default_rng(0).integers(0, 64, 5000).astype(np.uint16)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_causal_mixer_is_scored_past_its_context_or_says_where_its_table_ends(name):
    torch.manual_seed(0)
    model = ablate.build_model({**SHAPE, "mixer": name})
    if not model.causal:
        with pytest.raises(AblateError, match="not causal"):
            lengths.reach(model, (64, 256))
        return
    kept, stopped = lengths.reach(model, (64, 256))
    if model.decode_limit() is not None:
        assert kept == [64] and stopped.endswith("ends at position 64")
    else:
        assert kept == [64, 256] and stopped is None
    metrics = lengths.losses(model, VAL, kept, 256, 2)
    assert all(np.isfinite(v) for v in metrics.values())
    for n in kept:  # four equal ranges of positions average to the whole
        quarters = [v for k, v in metrics.items() if k.startswith(f"val_loss_at/{n}/")]
        assert len(quarters) == 4 and np.mean(quarters) == pytest.approx(metrics[f"val_loss_at/{n}"])


def test_every_length_scores_the_same_val_tokens_in_consecutive_windows(finished, capsys):
    """At each length the first `span` val tokens, cut into windows of that length: the loss is the
    mean over exactly those tokens (checked by hand at 64 and 128), and `eval --contexts` logs it."""
    study, results, _ = finished
    run_id = trial_runs(store_of(results), "tiny").iloc[0]["run_id"]
    store = ["--results", str(results), "--batch-size", "4", "--batches", "3", "--json"]
    assert main(["eval", run_id, "--data", str(study), "--contexts", "64,128", *store]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"val_loss_at/64", "val_loss_at/128", "val_loss_at/128/positions_96-127"}
    model = ablate.run.evaluations.load_model(ablate.tracking.store.client(store_of(results)), run_id)
    from ablate.data import open_source
    from ablate.plan import study as study_mod

    val = open_source(study_mod.load(study).config.data, results / "cache", study.parent).val
    size = lengths.span(val.size, [64, 128], 4 * 32, 3)
    assert size == 384  # 3 batches of 4 × 32 tokens, in whole windows of 128
    tokens = torch.from_numpy(np.asarray(val[: size + 1], dtype=np.int64))
    for n in (64, 128):
        with torch.no_grad():
            logits = model(tokens[:-1].view(-1, n))
        by_hand = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[1:]).item()
        assert out[f"val_loss_at/{n}"] == pytest.approx(by_hand, rel=1e-5)
    logged = ablate.tracking.store.client(store_of(results)).get_run(run_id)
    assert logged.data.metrics["val_loss_at/128"] == out["val_loss_at/128"]
    assert logged.data.tags["ablate.length_method"] == lengths.METHOD


def test_learned_positions_are_not_measured_past_their_table(tmp_path, capsys, own_store):
    study = write_study(
        tmp_path,
        f"""\
        name: learned
        data: {json.dumps(TINY_DATA)}
        model: {{mixer: mha, preset: nanogpt, context: 64, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn_dim: 64}}
        train: {{steps: 4, batch_size: 4, warmup: 1, eval_every: 2, eval_batches: 1}}
        variants: [{{name: mha}}]
        """,
    )
    results = tmp_path / "results"
    assert main(["run", str(study), "--results", str(results)]) == 0
    run_id = trial_runs(store_of(results), "learned").iloc[0]["run_id"]
    capsys.readouterr()
    assert main(["eval", run_id, "--contexts", "64,256", "--batches", "2", "--results", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "val_loss_at/64 " in printed and "(the training length)" in printed
    assert "longer lengths: n/a (the learned position table ends at position 64)" in printed
    tags = ablate.tracking.store.client(store_of(results)).get_run(run_id).data
    assert "val_loss_at/256" not in tags.metrics and tags.tags["ablate.length_stopped"].startswith("the learned")


def test_both_evaluations_at_once_and_a_length_past_the_val_split_are_one_line(finished, capsys):
    _, results, _ = finished
    run_id = trial_runs(store_of(results), "tiny").iloc[0]["run_id"]
    assert main(["eval", run_id, "--contexts", "64", "--lm-eval", "x", "--results", str(results)]) == 2
    assert "two evaluations: give one of them" in capsys.readouterr().err
    with pytest.raises(AblateError, match="too few for windows of 8192"):
        lengths.losses(ablate.build_model({**SHAPE, "mixer": "mha"}), VAL, [8192], 8192, 1)


@pytest.mark.slow
def test_a_study_with_eval_contexts_logs_each_length_and_compare_ranks_them(tmp_path):
    study = write_study(
        tmp_path,
        f"""\
        name: lengths
        data: {json.dumps(TINY_DATA)}
        model: {{context: 64, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn_dim: 64}}
        train: {{steps: 20, batch_size: 8, warmup: 2, eval_every: 10, eval_batches: 2}}
        variants: [{{name: mha, model: {{mixer: mha}}}}, {{name: gla, model: {{mixer: gla}}}}]
        seeds: [0, 1, 2]
        eval: {{contexts: [64, 256]}}
        """,
    )
    results = tmp_path / "results"
    proc = run_ablate("run", str(study), "--results", str(results))
    assert proc.returncode == 0, proc.stderr
    runs = trial_runs(store_of(results), "lengths")
    assert runs["metrics.val_loss_at/256"].notna().all() and len(runs) == 6
    proc = run_ablate("compare", "--results", str(results), "--metric", "val_loss_at/256", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["variant"]: row for row in json.loads(proc.stdout)}
    gla = runs[runs["tags.ablate.variant"] == "gla"]["metrics.val_loss_at/256"]
    assert rows["gla"]["mean"] == pytest.approx(gla.mean())

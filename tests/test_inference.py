"""What a variant costs to run, measured in a study: each final run logs its decoding figures,
`compare` ranks variants on them with the statistics it uses for loss, and the report sets
quality against that cost."""

import json

import mlflow
import pytest

from ablate.cli import main
from ablate.core.config import StudyConfig
from ablate.core.schema import lower_is_better
from tests.conftest import write_study

STUDY = """\
name: tiny-cost
data: {source: stdlib, vocab_size: 512, max_bytes: 300000}
model: {context: 32, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn_dim: 64}
train: {steps: 10, batch_size: 4, warmup: 2, eval_every: 5, eval_batches: 2}
variants:
  - {name: mha, model: {mixer: mha}}
  - {name: gla, model: {mixer: gla}}
  - {name: aft-full, model: {mixer: aft-full}}
seeds: [0, 1, 2]
decode: {contexts: [64, 512], steps: 8}
expect:
  - {variant: gla, metric: state_bytes/512, verdict: better}
"""


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cost")
    study, results = write_study(folder, STUDY), folder / "results"
    assert main(["run", str(study), "--results", str(results)]) == 0
    return results


def _runs(results):
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny-cost")
    return [r for r in client.search_runs([exp.experiment_id]) if "ablate.role" not in r.data.tags]


def test_each_final_run_logs_its_decoding_figures(decoded):
    runs = _runs(decoded)
    assert len(runs) == 9
    for run in runs:
        m, variant = run.data.metrics, run.data.tags["ablate.variant"]
        assert m["prefill_tokens_per_s"] > 0 and m["decode_tokens_per_s"] > 0
        if variant == "aft-full":  # its learned biases end at the training context
            assert not any(name.startswith("decode_ms_per_token/") for name in m)
            assert (
                run.data.tags["ablate.decode_stopped"]
                == "at 64: aft-full's table of learned biases ends at position 32"
            )
        else:
            assert m["decode_ms_per_token/64"] > 0 and m["decode_ms_per_token/512"] > 0
            assert "ablate.decode_stopped" not in run.data.tags
    mha = next(r.data.metrics for r in runs if r.data.tags["ablate.variant"] == "mha")
    gla = next(r.data.metrics for r in runs if r.data.tags["ablate.variant"] == "gla")
    assert mha["state_bytes/512"] == 2 * 512 * 32 * 4  # keys and values, 1 layer, qkv_dim 32, float32
    assert gla["state_bytes/64"] == gla["state_bytes/512"] < mha["state_bytes/64"]


def test_compare_ranks_variants_on_decode_cost_and_checks_the_expectation(decoded, capsys):
    store = ["--results", str(decoded), "--study", "tiny-cost"]
    assert main(["compare", *store, "--metric", "decode_ms_per_token/512", "--format", "json", "--no-report"]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gla"]["n"] == rows["mha"]["n"] == 3 and rows["aft-full"]["verdict"] == "n/a (not measured)"
    assert main(["compare", *store, "--metric", "state_bytes/512", "--format", "json", "--no-report"]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gla"]["verdict"] == "better" and rows["gla"]["mean"] == 2048  # 1 layer, 2 heads of 16 × 16, float32
    assert main(["compare", *store, "--check", "--no-report"]) == 0  # the state's expectation held
    capsys.readouterr()
    assert main(["compare", *store, "--part", "expectations", "--format", "json", "--no-report"]) == 0
    ((row),) = json.loads(capsys.readouterr().out)
    assert (row["variant"], row["metric"], row["held"]) == ("gla", "state_bytes/512", True)


def test_the_report_sets_quality_against_decode_cost(decoded, capsys):
    assert main(["compare", "--results", str(decoded), "--study", "tiny-cost"]) == 0
    assert (decoded / "tiny-cost" / "quality_by_decode_cost.png").stat().st_size > 0
    assert (
        main(["compare", "--results", str(decoded), "--study", "tiny-cost", "--metric", "decode_ms_per_token/512"]) == 0
    )
    capsys.readouterr()
    assert (decoded / "tiny-cost" / "decode_ms_per_token_512_intervals.png").stat().st_size > 0  # a file, not a folder


def test_decode_metrics_have_a_direction_and_the_section_is_checked():
    assert lower_is_better("decode_ms_per_token/4096") and lower_is_better("state_bytes/256")
    assert not lower_is_better("decode_tokens_per_s") and not lower_is_better("prefill_tokens_per_s")
    base = {"name": "s", "variants": [{"name": "a"}]}
    for bad in ({"contexts": [32]}, {"contexts": []}, {"steps": 2}, {"context": [256]}):
        with pytest.raises(ValueError):
            StudyConfig(**base, decode=bad)

"""The causality audit: `ablate audit`, and `ablate run` refusing leaking variants unless allowed."""

import json

import mlflow
import torch
from torch import nn

from ablate.cli import main
from ablate.mixers.registry import Mixer, register
from tests.conftest import TINY_STUDY, write_study


@register("test-batch-mean")
class BatchMean(Mixer):
    """Test only: mixes every position of every sequence, as the published retention code does."""

    causal = False

    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x.mean(dim=(0, 1), keepdim=True).expand_as(x))


LEAKY_STUDY = TINY_STUDY.replace("mixer: aft-simple, ffn: false", "mixer: test-batch-mean").replace(
    "seeds: [0, 1]", "seeds: [0]"
)


def test_audit_passes_causal_mixers_and_flags_a_leaking_one(capsys):
    assert main(["audit", "--variant", "mha", "--variant", "aft-simple"]) == 0
    assert "NO" not in capsys.readouterr().out
    assert main(["audit", "--variant", "test-batch-mean"]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if "test-batch-mean" in line)
    assert "NO" in row


def test_audit_of_a_study_exits_1_unless_it_allows_leaks(tmp_path, capsys):
    assert main(["audit", str(write_study(tmp_path, LEAKY_STUDY))]) == 1
    allowed = write_study(tmp_path, LEAKY_STUDY + "allow_leaky: true\n", "allowed.yaml")
    assert main(["audit", str(allowed)]) == 0
    assert main(["audit"]) == 2
    capsys.readouterr()


def test_run_refuses_a_leaking_variant_before_writing_anything(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", str(write_study(tmp_path, LEAKY_STUDY)), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "variant 'aft' is not causal" in err and "allow_leaky: true" in err and err.count("\n") == 1
    assert not results.exists()


def test_an_allowed_leaking_variant_is_tagged_and_marked_in_compare(tmp_path, capsys):
    study = write_study(tmp_path, LEAKY_STUDY + "allow_leaky: true\n")
    results = tmp_path / "results"
    store = ["--results", str(results), "--tracking-uri", f"sqlite:///{results / 'mlflow.db'}"]
    assert main(["run", str(study), *store]) == 0
    out = capsys.readouterr().out
    assert "leaking (allowed by allow_leaky): aft" in out and "prefix_val_loss" in out
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`ablate.phase` = 'final'")
    causal = {r.data.tags["ablate.variant"]: r.data.tags["ablate.causal"] for r in runs}
    assert causal == {"mha": "true", "aft": "false"}
    prefix = {r.data.tags["ablate.variant"]: r.data.metrics.get("prefix_val_loss") for r in runs}
    assert prefix["mha"] is None and prefix["aft"] > 0  # the honest loss, logged for the leaking run only
    assert main(["compare", *store, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["variant"]: r["causal"] for r in rows} == {"mha": "yes", "aft": "no"}

"""Scaling studies: a list of sizes in the budget plans every variant at every size, and
`ablate compare --scaling` fits L = E + A·x^(−α) per variant with bootstrap intervals and finds
where two laws cross. The fits are checked on points drawn from known laws."""

import numpy as np
import pandas as pd
import pytest

from ablate.cli import main
from ablate.compare import scaling
from ablate.compare.scaling import Law, crossing, fit, fit_law
from ablate.core.errors import AblateError
from ablate.plan.study import load
from tests.conftest import write_study

SIZES = [5e4, 1e5, 2e5, 4e5, 8e5]


def drawn(laws: dict[str, Law], seeds: int = 5, noise: float = 0.01, seed: int = 1) -> pd.DataFrame:
    """Points of a study whose variants follow the laws exactly, plus Gaussian noise per seed."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "variant": v,
            "size": x,
            "seed": s,
            "params": x,
            "flops": 6e3 * x,
            "loss": float(law(x)) + rng.normal(0, noise),
        }
        for v, law in laws.items()
        for x in SIZES
        for s in range(seeds)
    ]
    return pd.DataFrame(rows)


def test_noiseless_points_give_back_their_law_exactly():
    truth = Law(2.2, 80.0, 0.45)
    law = fit_law(np.array(SIZES), truth(SIZES))
    assert law.E == pytest.approx(2.2, rel=1e-4)
    assert law.A == pytest.approx(80.0, rel=1e-3)
    assert law.alpha == pytest.approx(0.45, rel=1e-4)


@pytest.mark.parametrize("truth", [Law(2.0, 60.0, 0.4), Law(2.6, 9000.0, 0.9), Law(1.5, 8.0, 0.2)])
def test_a_known_law_lies_within_its_intervals(truth):
    laws = fit(drawn({"v": truth}), "val_loss", [], replicates=400).laws
    row = laws[laws["axis"] == "params"].iloc[0]
    for name in ("E", "A", "alpha"):
        assert row[f"{name}_low"] <= getattr(truth, name) <= row[f"{name}_high"], (name, row)
    assert row["alpha_high"] - row["alpha_low"] < 0.3  # and the interval says something


def test_the_flops_axis_is_the_same_law_in_other_units():
    laws = fit(drawn({"v": Law(2.0, 60.0, 0.4)}), "val_loss", [], replicates=50).laws.set_index("axis")
    assert laws.loc["flops", "alpha"] == pytest.approx(laws.loc["params", "alpha"], rel=1e-3)
    assert laws.loc["flops", "A"] == pytest.approx(
        laws.loc["params", "A"] * 6e3 ** laws.loc["params", "alpha"], rel=1e-2
    )


def test_two_laws_with_a_known_crossing_are_found_to_cross_there():
    # a − b = −0.4 + 179·x^(−1/2): zero at x = (179/0.4)² ≈ 2.0e5, inside the measured sizes
    a, b = Law(2.0, 199.0, 0.5), Law(2.4, 20.0, 0.5)
    row = fit(drawn({"a": a, "b": b}), "val_loss", [("a", "b")], replicates=400).crossings.iloc[0]
    assert row["ci_low"] <= (179 / 0.4) ** 2 <= row["ci_high"]
    assert row["where"] == "within the measured range" and row["share"] > 0.95
    assert row["lower_beyond"] == "a"  # a's lower floor wins at large sizes


def test_a_crossing_beyond_the_measured_sizes_is_flagged_with_how_far():
    a, b = Law(2.0, 199.0, 0.5), Law(2.4, 20.0, 0.5)  # they cross at 2.0e5
    assert crossing(a, b, 1e3, 1e7) == pytest.approx((179 / 0.4) ** 2, rel=1e-6)
    assert scaling.reach(2e7, (5e4, 8e5)) == "EXTRAPOLATED 25× beyond the largest measured"
    assert crossing(a, Law(3.0, 20.0, 0.5), 1e3, 1e7) == pytest.approx(179**2)  # 1 = 179·x^(−1/2)
    assert crossing(a, Law(3.0, 20.0, 0.5), 1e5, 1e7) is None  # beyond it a stays below


def test_a_crossing_of_a_law_fitted_to_unconverged_points_is_no_finding():
    a, b = Law(2.0, 199.0, 0.5), Law(2.4, 20.0, 0.5)  # a real crossing, inside the measured range
    out = fit(drawn({"a": a, "b": b}), "val_loss", [("a", "b")], replicates=50, unconverged=frozenset({"b"}))
    assert out.crossings.iloc[0]["where"] == "NO FINDING (b not converged): within the measured range"
    assert dict(zip(out.laws["variant"], out.laws["converged"])) == {"a": True, "b": False}
    (note,) = scaling.convergence_notes(out)
    assert note.startswith("b: NOT CONVERGED") and "no crossing of it is a finding" in note


def test_laws_that_never_cross_say_so():
    row = fit(drawn({"a": Law(2.0, 60.0, 0.4), "b": Law(2.5, 60.0, 0.4)}), "val_loss", [("b", "a")], replicates=100)
    row = row.crossings.iloc[0]
    assert np.isnan(row["at"]) and row["where"].startswith("no crossing up to") and row["lower_beyond"] == "a"


def test_predictions_beyond_the_measured_sizes_are_flagged():
    out = fit(drawn({"v": Law(2.0, 60.0, 0.4)}), "val_loss", [], at=[1e7], replicates=200).predictions.iloc[0]
    assert out["ci_low"] <= Law(2.0, 60.0, 0.4)(1e7) <= out["ci_high"]
    assert out["where"] == "EXTRAPOLATED 12.5× beyond the largest measured"


def test_a_floor_the_sizes_do_not_pin_down_is_said_to_sit_on_its_bound():
    # a law whose floor lies below 0: the fit holds E at 0, its bound
    out = fit(drawn({"pure": Law(-1.0, 30.0, 0.1), "floored": Law(2.0, 60.0, 0.4)}), "val_loss", [], replicates=20)
    notes = scaling.bound_notes(out)
    assert len(notes) == 2 and all(n.startswith("pure against ") for n in notes)  # both axes
    assert "E sits on its bound (0)" in notes[0]


def test_fewer_than_three_sizes_give_no_law():
    assert fit_law(np.array([1e5, 1e5, 2e5]), np.array([3.0, 3.1, 2.9])) is None


SCALING = """\
name: scal
data: {source: stdlib, vocab_size: 512, max_bytes: 300000}
model: {preset: strawberry, context: 32, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn_dim: 128}
train: {steps: 30, batch_size: 8, warmup: 5, eval_every: 15, eval_batches: 2, log_every: 5}
budget: {params: [8000, 16000, 32000], tolerance: 0.03}
variants:
  - {name: mha, model: {mixer: mha}, scale: width}
  - {name: aft, model: {mixer: aft-simple, ffn: false, n_layers: 2}, scale: width}
contrasts: [[aft, mha]]
expect:
  - {variant: aft, verdict: worse}
  - {variant: mha@32k, against: mha@8k, verdict: better}
seeds: [0, 1]
"""


def test_a_list_budget_plans_every_variant_at_every_size(tmp_path):
    study = load(write_study(tmp_path, SCALING))
    names = ["mha@8k", "mha@16k", "mha@32k", "aft@8k", "aft@16k", "aft@32k"]
    assert list(dict.fromkeys(t.variant for t in study.trials)) == names
    assert [v.name for v in study.config.variants] == names
    for t in study.trials:
        assert t.n_params_non_embedding == pytest.approx(t.size, rel=0.03)
        assert t.scaled == t.variant.split("@")[0]
        if t.model.ffn:  # width keeps ffn_dim at 4·d_model (up to the finer step that meets the budget)
            assert abs(t.model.ffn_dim - 4 * t.model.d_model) <= 8 * 4
    assert study.config.contrasts == [("aft@8k", "mha@8k"), ("aft@16k", "mha@16k"), ("aft@32k", "mha@32k")]
    expected = [(e.variant, e.against) for e in study.config.expect]
    assert expected == [("aft@8k", "mha@8k"), ("aft@16k", "mha@16k"), ("aft@32k", "mha@32k"), ("mha@32k", "mha@8k")]
    assert study.baseline == "mha@32k"


@pytest.mark.parametrize(
    "change, message",
    [
        ("params: [8000, 16000, 32000]", None),
        ("params: [16000, 8000]", "in increasing order"),
        ("params: [8000]", "two or more"),
    ],
)
def test_a_list_of_sizes_must_grow(tmp_path, change, message):
    path = write_study(tmp_path, SCALING.replace("params: [8000, 16000, 32000]", change))
    if message is None:
        load(path)
        return
    with pytest.raises(AblateError, match=message):
        load(path)


def test_a_size_that_is_not_planned_is_named_with_the_ones_that_are(tmp_path):
    with pytest.raises(AblateError, match=r"'mha@9k' is not a variant \(did you mean 'mha@8k'"):
        load(write_study(tmp_path, SCALING.replace("against: mha@8k", "against: mha@9k")))


def test_tokens_per_param_sets_each_sizes_steps(tmp_path):
    text = SCALING.replace("steps: 30,", "tokens_per_param: 20,")
    study = load(write_study(tmp_path, text))
    for t in study.trials:
        assert t.train.steps == round(20 * t.n_params_non_embedding / (8 * 32))
    assert len({t.train.steps for t in study.trials if t.variant.startswith("mha")}) == 3


def test_steps_and_tokens_per_param_together_are_refused(tmp_path):
    text = SCALING.replace("steps: 30,", "steps: 30, tokens_per_param: 20,")
    with pytest.raises(AblateError, match=r"study.yaml:4: train.steps: give steps or tokens_per_param, not both"):
        load(write_study(tmp_path, text))


def test_a_warmup_longer_than_the_steps_tokens_per_param_gives_is_refused(tmp_path):
    text = SCALING.replace("steps: 30, batch_size: 8, warmup: 5", "tokens_per_param: 1, batch_size: 8, warmup: 40")
    with pytest.raises(AblateError, match=r"warmup \(40\) is longer than steps \(3\d\).*from tokens_per_param"):
        load(write_study(tmp_path, text))


@pytest.mark.slow
def test_a_scaling_study_runs_and_compare_fits_its_laws(tmp_path, own_store, capsys):
    path = write_study(tmp_path, SCALING)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 0
    capsys.readouterr()
    assert main(["compare", "--results", str(results), "--scaling", "--at", "1e5"]) == 0
    out = capsys.readouterr().out
    assert "val_loss = E + A·x^(−α), fitted per variant" in out
    assert "aft vs mha" in out and "EXTRAPOLATED 3.1" in out  # 1e5 against 32,0xx measured
    assert main(["compare", "--results", str(results), "--part", "laws", "--format", "csv"]) == 0
    laws = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert set(laws["variant"]) == {"mha", "aft"} and set(laws["axis"]) == {"params", "flops"}
    assert (laws["sizes"] == 3).all() and (laws["points"] == 6).all()
    page = (results / "scal" / "report.html").read_text()
    assert page.index('alt="val_loss_scaling"') < page.index("<h2>Scaling laws") < page.index("<h2>Contrasts")


def test_scaling_on_a_study_of_one_size_is_one_line(tmp_path, own_store, capsys):
    path = write_study(tmp_path, SCALING.replace("params: [8000, 16000, 32000]", "params: 16000").split("expect:")[0])
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 0
    assert main(["compare", "--results", str(results), "--scaling", "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "ablate: error: --scaling: study 'scal' has no scaling laws: it has one size (a scaling study lists its "
        "sizes in budget:)"
    )


@pytest.mark.parametrize("name", ["scaling_ffn", "scaling_retention"])
def test_shipped_scaling_studies_meet_every_size_within_one_percent(name):
    from tests.test_model import STUDIES

    study = load(STUDIES / f"{name}.yaml")
    sizes = study.config.budget.sizes
    for t in study.trials:
        assert abs(t.n_params_non_embedding - t.size) <= 0.01 * t.size
    assert {t.size for t in study.trials} == set(sizes) and len(sizes) == 4
    assert all(f"{t.scaled}@" in t.variant for t in study.trials)

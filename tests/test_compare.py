"""The comparison table's numbers, checked against scipy on fixed inputs, and Holm and the
effect sizes against values worked out by hand."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ablate.compare import cells
from ablate.compare.runs import latest_per_seed
from ablate.compare.stats import d_z, detectable, hedges_g, holm
from ablate.compare.tables import (
    convergence,
    expectations,
    pairs_table,
    shapes,
    small_samples,
    summarize,
    unequal_cost,
)
from ablate.core.errors import AblateError
from ablate.core.questions import Budget, Expectation
from ablate.core.schema import lower_is_better

BASE = [4.71, 4.68, 4.75, 4.70, 4.73]  # seeds 0-4
PAIRED = [4.65, 4.66, 4.69, 4.61, 4.70]  # seeds 0-4: paired with the baseline
UNPAIRED = [4.95, 5.05, 5.00]  # seeds 10-12: no seed in common, so Welch


def frame(groups: dict[str, tuple[list[int], list[float]]]) -> pd.DataFrame:
    rows = [
        {
            "tags.ablate.variant": variant,
            "tags.ablate.seed": str(seed),
            "metrics.val_loss": value,
            "params.n_params": "1000",
            "start_time": pd.Timestamp("2026-11-24") + pd.Timedelta(seconds=len(seeds) * i),
        }
        for variant, (seeds, values) in groups.items()
        for i, (seed, value) in enumerate(zip(seeds, values))
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def table():
    runs = frame(
        {"base": ([0, 1, 2, 3, 4], BASE), "paired": ([0, 1, 2, 3, 4], PAIRED), "apart": ([10, 11, 12], UNPAIRED)}
    )
    return summarize(runs, "val_loss", "base", ["base", "paired", "apart"]).set_index("variant")


def test_per_variant_numbers_match_scipy(table):
    for variant, values in (("base", BASE), ("paired", PAIRED), ("apart", UNPAIRED)):
        row, x = table.loc[variant], np.array(values)
        assert row["n"] == len(x)
        assert row["mean"] == pytest.approx(np.mean(x), abs=1e-9)
        assert row["std"] == pytest.approx(np.std(x, ddof=1), abs=1e-9)
        assert row["median"] == pytest.approx(np.median(x), abs=1e-9)
        low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
        assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((low, high), abs=1e-9)


def test_paired_comparison_matches_scipy(table):
    row = table.loc["paired"]
    paired = stats.ttest_rel(PAIRED, BASE)
    assert row["test"] == "paired (5 seeds)"
    assert row["p_paired"] == pytest.approx(paired.pvalue, abs=1e-9)
    assert row["p"] == row["p_paired"]
    assert row["diff"] == pytest.approx(np.mean(np.subtract(PAIRED, BASE)), abs=1e-9)
    ci = paired.confidence_interval(0.95)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert row["p_welch"] == pytest.approx(stats.ttest_ind(PAIRED, BASE, equal_var=False).pvalue, abs=1e-9)
    assert row["effect_kind"] == "d_z"
    assert math.isnan(row["p_wilcoxon"])  # 5 pairs: Wilcoxon could never reach p < 0.0625


def test_unpaired_comparison_is_welch_and_matches_scipy(table):
    row = table.loc["apart"]
    welch = stats.ttest_ind(UNPAIRED, BASE, equal_var=False)
    assert row["test"] == "welch" and math.isnan(row["p_paired"])
    assert row["p"] == pytest.approx(welch.pvalue, abs=1e-9)
    ci = welch.confidence_interval(0.95)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert row["diff"] == pytest.approx(np.mean(UNPAIRED) - np.mean(BASE), abs=1e-9)
    assert row["effect_kind"] == "g"


def test_holm_and_verdicts_over_the_table(table):
    p = [table.loc["paired", "p"], table.loc["apart", "p"]]
    small, large = sorted(p)
    expected = {small: min(1, 2 * small), large: max(min(1, 2 * small), large)}
    for variant in ("paired", "apart"):
        assert table.loc[variant, "p_holm"] == pytest.approx(expected[table.loc[variant, "p"]], abs=1e-12)
    assert table.loc["base", "verdict"] == "baseline" and math.isnan(table.loc["base", "p_holm"])
    assert table.loc["paired", "verdict"] == "better"  # lower loss on every seed, p_holm < 0.05
    assert table.loc["apart", "verdict"] == "worse"


def test_holm_by_hand():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (monotone)
    adjusted = holm(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02], atol=1e-15)
    assert math.isnan(adjusted[4])
    assert holm(np.array([0.5, 0.6]))[1] == 1.0  # capped at 1


def test_effect_sizes_by_hand():
    # a = [1, 2, 3], b = [2, 3, 4, 5]: means 2 and 3.5, variances 1 and 5/3,
    # pooled sd √((2·1 + 3·5/3) / 5) = √1.4, correction 1 − 3/(4·7 − 9) = 16/19
    assert hedges_g(np.array([1.0, 2, 3]), np.array([2.0, 3, 4, 5])) == pytest.approx(-1.5 / math.sqrt(1.4) * 16 / 19)
    # differences [1, 2, 3, 6]: mean 3, sd √((4 + 1 + 0 + 9) / 3)
    assert d_z(np.array([1.0, 2, 3, 6])) == pytest.approx(3 / math.sqrt(14 / 3))


def test_wilcoxon_only_from_six_pairs():
    seeds = list(range(6))
    base, other = [4.7, 4.6, 4.8, 4.75, 4.72, 4.69], [4.6, 4.62, 4.7, 4.7, 4.6, 4.61]
    table = summarize(frame({"b": (seeds, base), "o": (seeds, other)}), "val_loss", "b").set_index("variant")
    assert table.loc["o", "p_wilcoxon"] == pytest.approx(stats.wilcoxon(other, base).pvalue, abs=1e-9)


def test_direction_and_small_samples():
    assert lower_is_better("val_loss", None) and lower_is_better("prefix_val_loss", None)
    assert not lower_is_better("accuracy", None) and not lower_is_better("tokens_per_s", None)
    assert lower_is_better("my_score", True) is True
    with pytest.raises(AblateError, match="--higher-is-better or --lower-is-better"):
        lower_is_better("my_score", None)
    runs = frame({"b": ([0, 1, 2], BASE[:3]), "o": ([0, 1], PAIRED[:2])})
    higher = summarize(runs, "val_loss", "b", lower=False).set_index("variant")
    assert small_samples(higher.reset_index()) == ["o"]
    assert higher.loc["o", "test"] == "paired (2 seeds)"


def test_the_newest_run_of_each_variant_and_seed_counts():
    runs = frame({"b": ([0, 0, 1], [9.0, 4.0, 4.1])})  # seed 0 ran twice: 9.0 first, then 4.0
    newest, set_aside = latest_per_seed(runs)
    assert set_aside == 1 and sorted(newest["metrics.val_loss"]) == [4.0, 4.1]


def test_minimum_detectable_effect_has_the_power_it_claims():
    """Independently of the noncentral t: simulated paired differences of the returned size are
    detected by scipy's t-test in 80% of draws; for many pairs it tends to (z_.975 + z_.8)·se."""
    n, sd = 5, 0.03
    mde = detectable(sd / math.sqrt(n), n - 1)
    rng = np.random.default_rng(0)
    draws = rng.normal(mde, sd, size=(40_000, n))
    power = (stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05).mean()
    assert power == pytest.approx(0.8, abs=0.01)
    assert detectable(1.0, 10_000) == pytest.approx(stats.norm.ppf(0.975) + stats.norm.ppf(0.8), rel=1e-3)
    assert detectable(1.0, 4, alpha=0.01) > detectable(1.0, 4)  # a stricter level needs a larger difference


def test_the_table_reports_the_mde_at_holms_strictest_level(table):
    d = np.subtract(PAIRED, BASE)
    m = 2  # two comparisons in the table
    expected = detectable(d.std(ddof=1) / math.sqrt(5), 4, alpha=0.05 / m)
    assert table.loc["paired", "mde"] == pytest.approx(expected, rel=1e-9)


def test_contrasts_pair_by_seed_not_by_row_order_and_form_their_own_holm_family():
    seeds = [0, 1, 2, 3]
    a = [5.0, 5.2, 4.9, 5.1]
    b = [5.3, 5.6, 5.1, 5.5]  # b − a per seed: 0.3, 0.4, 0.2, 0.4
    c = [5.0, 5.2, 4.9, 5.1]
    runs = frame({"a": (seeds, a), "b": (seeds[::-1], b[::-1]), "c": (seeds, c)})  # b's rows in reverse order
    table = pairs_table(runs, "val_loss", [("b", "a"), ("c", "a")])
    first = table.iloc[0]
    assert first["diff"] == pytest.approx(np.mean(np.subtract(b, a)))
    assert first["p"] == pytest.approx(stats.ttest_rel(b, a).pvalue, abs=1e-12)
    assert first["p_holm"] == pytest.approx(holm(table["p"].to_numpy())[0])
    assert first["verdict"] == "worse" and table.iloc[1]["verdict"] in ("too few runs", "no significant difference")


def test_a_higher_is_better_metric_turns_the_verdict():
    seeds = [0, 1, 2, 3]
    runs = frame({"a": (seeds, [0.5, 0.52, 0.49, 0.51]), "b": (seeds, [0.9, 0.95, 0.93, 0.97])})
    assert pairs_table(runs, "val_loss", [("b", "a")], lower=False).iloc[0]["verdict"] == "better"
    assert pairs_table(runs, "val_loss", [("b", "a")], lower=True).iloc[0]["verdict"] == "worse"


def test_expectations_hold_or_fail():
    seeds = [0, 1, 2, 3, 4]
    runs = frame({"base": (seeds, BASE), "paired": (seeds, PAIRED), "twin": (seeds, [v + 1e-4 for v in BASE])})
    runs.loc[runs["tags.ablate.variant"] == "twin", "metrics.val_loss"] += [0.002, -0.001, 0.001, -0.002, 0.0]
    expected = [
        Expectation(variant="paired", verdict="better"),
        Expectation(variant="twin", against="base", verdict="same"),
        Expectation(variant="paired", against="twin", verdict="worse"),
    ]
    checks = expectations(runs, expected, "base", lambda metric: True)
    assert list(checks["held"]) == [True, True, False]
    assert list(checks["verdict"]) == ["better", "no significant difference", "better"]


def test_expectations_against_a_variants_own_metric_within_a_bound_and_not_measured():
    """`than` pairs a variant's metric with its own other metric by seed; `within` holds 'same'
    only where the difference's 95% interval lies inside the bound; n/a holds where the variant
    logged no value (a learned table past its end)."""
    seeds = [0, 1, 2, 3]
    runs = frame({"alibi": (seeds, [4.00, 4.10, 3.95, 4.05]), "learned": (seeds, [3.9, 4.0, 3.95, 4.1])})
    long = {"alibi": [4.10, 4.22, 4.01, 4.14], "learned": [np.nan] * 4}
    runs["metrics.val_loss_at/1024"] = [v for name in ("alibi", "learned") for v in long[name]]
    runs["metrics.val_loss_at/128"] = runs["metrics.val_loss"]
    expected = [
        Expectation(variant="alibi", metric="val_loss_at/1024", than="val_loss_at/128", verdict="worse"),
        Expectation(variant="alibi", metric="val_loss_at/1024", than="val_loss_at/128", verdict="same", within=0.1),
        Expectation(variant="alibi", metric="val_loss_at/1024", than="val_loss_at/128", verdict="same", within=0.01),
        Expectation(variant="learned", metric="val_loss_at/1024", verdict="n/a"),
        Expectation(variant="alibi", metric="val_loss_at/1024", verdict="n/a"),
    ]
    checks = expectations(runs, expected, "alibi", lambda metric: True)
    d = np.subtract(long["alibi"], [4.00, 4.10, 3.95, 4.05])
    low, high = stats.ttest_rel(long["alibi"], [4.00, 4.10, 3.95, 4.05]).confidence_interval(0.95)
    assert checks.loc[0, "diff"] == pytest.approx(d.mean()) and checks.loc[0, "against"] == "its val_loss_at/128"
    assert checks.loc[0, "p"] == pytest.approx(stats.ttest_rel(long["alibi"], [4.00, 4.10, 3.95, 4.05]).pvalue)
    assert 0 < low and high < 0.1 * 4.025 and high > 0.01 * 4.025  # inside 10%, not inside 1%
    assert list(checks["verdict"]) == ["worse", "same within 10%", "not shown within 1%", "n/a", "measured"]
    assert list(checks["held"]) == [True, True, False, True, False]
    _, rows = cells.expectations(SimpleNamespace(checks=checks))
    assert [row[0] for row in rows] == ["alibi vs its val_loss_at/128"] * 3 + ["learned", "alibi"]
    assert [row[2] for row in rows] == ["worse", "same within 10%", "same within 1%", "n/a", "n/a"]
    with pytest.raises(ValueError, match="not both"):
        Expectation(variant="a", against="b", than="val_loss", metric="val_loss_at/256", verdict="worse")
    with pytest.raises(ValueError, match="within bounds a 'same' verdict"):
        Expectation(variant="a", verdict="worse", within=0.1)


def test_convergence_marks_a_curve_still_falling_and_one_near_the_unigram_entropy():
    history = pd.DataFrame(
        [("done", 0, s, v) for s, v in [(100, 5.0), (200, 4.6), (300, 4.58)]]
        + [("falling", 0, s, v) for s, v in [(100, 6.3), (200, 6.25), (300, 5.6)]]
        + [("plateau", 0, s, v) for s, v in [(100, 6.2), (200, 6.1), (300, 6.09)]],
        columns=["variant", "seed", "step", "value"],
    )
    table = convergence(history, start_loss=math.log(2048), unigram=6.26).set_index("variant")
    assert table.loc["done", "converged"] and table.loc["done", "slope"] == pytest.approx(-0.02)
    assert table.loc["done", "pace"] == pytest.approx(0.0002 / ((math.log(2048) - 4.58) / 300))
    assert not table.loc["falling", "converged"] and "still falling" in table.loc["falling", "why"]
    assert not table.loc["plateau", "converged"] and "unigram entropy" in table.loc["plateau", "why"]


def test_convergence_measures_the_pace_from_the_curves_own_step_0():
    """Runs log the untrained model's val loss at step 0 (above ln vocab on the seed's
    initialisation): the average rate is taken from there, and step 0 is not one of the last
    two evals."""
    history = pd.DataFrame(
        [("a", 0, s, v) for s, v in [(0, 8.2), (100, 5.0), (200, 4.6), (300, 4.58)]],
        columns=["variant", "seed", "step", "value"],
    )
    row = convergence(history, start_loss=math.log(2048), unigram=6.26).iloc[0]
    assert row["pace"] == pytest.approx(0.0002 / ((8.2 - 4.58) / 300)) and row["converged"]
    one_eval = convergence(history[history["step"].isin([0, 300])], math.log(2048), 6.26).iloc[0]
    assert np.isnan(one_eval["pace"]) and one_eval["converged"]  # one eval after step 0: no rate to judge


def test_identical_runs_are_the_same_and_a_constant_shift_is_a_difference():
    seeds = [0, 1, 2]
    runs = frame({"a": (seeds, BASE[:3]), "twin": (seeds, BASE[:3]), "shifted": (seeds, [v + 0.1 for v in BASE[:3]])})
    table = pairs_table(runs, "val_loss", [("twin", "a"), ("shifted", "a")]).set_index("variant")
    assert table.loc["twin", "p"] == 1.0 and table.loc["twin", "verdict"] == "no significant difference"
    assert table.loc["shifted", "p"] == 0.0 and table.loc["shifted", "verdict"] == "worse"


def test_the_table_shows_what_the_budget_held_equal_and_says_what_it_did_not():
    runs = pd.DataFrame(
        [
            {
                "tags.ablate.variant": v,
                "params.n_params": str(total),
                "params.n_params_non_embedding": str(counted),
                "params.model.n_layers": layers,
                "params.model.d_model": width,
                "params.flops_per_token": str(flops),
            }
            for v, total, counted, layers, width, flops in [
                ("mha", 294_912, 163_840, "2", "128", 1_000_000),
                ("retention-no-ffn", 229_376, 163_840, "4", "96", 1_270_000),
            ]
        ]
    )
    by_params = shapes(runs, Budget(params=163_840, count="non_embedding")).set_index("variant")
    assert list(by_params["budgeted"]) == [163_840, 163_840]  # not the totals, which differ by the embeddings
    assert set(by_params["budgeted_as"]) == {"non-embedding params (the study's budget)"}
    assert (by_params.loc["retention-no-ffn", "n_layers"], by_params.loc["retention-no-ffn", "d_model"]) == (4, 96)
    line = unequal_cost(by_params.reset_index(), Budget(params=163_840, count="non_embedding"))
    assert line.startswith("forward FLOPs/token differ by up to 27% across variants (mha 1,000,000, retention-no-ffn")
    assert set(shapes(runs, Budget(params=294_912, count="total"))["budgeted_as"]) == {
        "total params (the study's budget)"
    }
    by_flops = shapes(runs.assign(**{"params.flops_per_token": "1000000"}), Budget(flops_per_token=1e6))
    assert list(by_flops["budgeted"]) == [1e6, 1e6]
    assert unequal_cost(by_flops, Budget(flops_per_token=1e6)) is None  # equal non-embedding params too
    assert set(shapes(runs, None)["budgeted_as"]) == {"non-embedding params"}  # no budget: labelled as such


def test_the_table_pairs_with_the_baseline_by_seed_not_by_row_order():
    seeds = [0, 1, 2, 3, 4]
    paired = [v - 0.05 for v in BASE]  # exactly 0.05 better on every seed: paired p = 0
    runs = frame({"base": (seeds, BASE), "paired": (seeds[::-1], paired[::-1])})  # rows in reverse seed order
    row = summarize(runs, "val_loss", "base", ["base", "paired"]).set_index("variant").loc["paired"]
    assert row["p_paired"] == 0.0 and row["verdict"] == "better"
    assert stats.ttest_rel(paired[::-1], BASE).pvalue > 1e-3  # what pairing by row position would give


def test_a_verdict_within_a_quarter_of_alpha_is_marked_borderline_with_its_p():
    """p 0.053 (3 seeds, one comparison) reads 'no significant difference', but a machine whose
    kernels round otherwise can land at 0.050 and read 'worse': the table says it is borderline."""
    from ablate.compare import cells

    seeds = [0, 1, 2]
    a = [5.0, 5.1, 4.9]
    runs = frame(
        {
            "a": (seeds, a),
            "near": (seeds, [x + d for x, d in zip(a, [1.0, 2.0, 2.5])]),
            "far": (seeds, [x + d for x, d in zip(a, [1.0, 1.1, 1.2])]),
        }
    )
    near, far = (pairs_table(runs, "val_loss", [(v, "a")]).iloc[0] for v in ("near", "far"))
    assert 0.04 <= stats.ttest_rel([1.0, 2.0, 2.5], [0, 0, 0]).pvalue < 0.0625
    assert near["borderline"] and near["verdict"] == "no significant difference"
    assert not far["borderline"] and far["verdict"] == "worse"
    assert cells._borderline(near) == f"no significant difference (borderline, p {near['p_holm']:.3f})"
    assert cells._borderline(far) == "worse"

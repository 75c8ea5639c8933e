"""The comparison table's numbers, checked against scipy on fixed inputs, and Holm and the
effect sizes against values worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ablate.compare import d_z, hedges_g, holm, latest_per_seed, lower_is_better, small_samples, summarize
from ablate.errors import AblateError

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

"""The statistics of a comparison, each checked against scipy in the tests: the description of a
variant's runs, the tests against another variant (paired by seed, else Welch's), the effect
sizes, Holm's correction, the minimum detectable effect and the verdict."""

import warnings

import numpy as np
import pandas as pd
from scipy import optimize, stats

# scipy warns of precision loss on groups whose values are all equal (a solved task's accuracy of 1);
# `against` handles them, so the warning says nothing to a reader of the table.
warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)

ALPHA = 0.05
POWER = 0.8  # for the minimum detectable effect
BORDERLINE = 1.25  # p (Holm) in [α/1.25, α·1.25) = [0.04, 0.0625): a verdict marked borderline
WILCOXON_MIN_PAIRS = 6  # at 5 pairs or fewer its smallest two-sided p is 0.0625: it can never reject


def describe(x: np.ndarray) -> dict[str, float]:
    """n, mean, std, 95% t-interval of the mean, median."""
    n = len(x)
    mean = x.mean() if n else np.nan
    low, high = (
        (np.nan, np.nan)
        if n < 2
        else (mean, mean)
        if np.ptp(x) == 0
        else stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(x))
    )
    return {
        "n": n,
        "mean": mean,
        "std": x.std(ddof=1) if n > 1 else np.nan,
        "ci95_low": low,
        "ci95_high": high,
        "median": np.median(x) if n else np.nan,
    }


def against(a: pd.Series, b: pd.Series) -> dict[str, float | str]:
    """a against the baseline b (both indexed by seed): difference a − b with its 95% interval, the
    tests, and the effect size. Paired over the common seeds when there are at least two."""
    out: dict[str, float | str] = {"diff": a.mean() - b.mean()}
    if len(a) > 1 and len(b) > 1:
        welch = stats.ttest_ind(a, b, equal_var=False)
        low, high = welch.confidence_interval(0.95)
        out |= {"p_welch": welch.pvalue, "diff_ci_low": low, "diff_ci_high": high}
        out |= {"test": "welch", "p": welch.pvalue, "effect": hedges_g(a.to_numpy(), b.to_numpy()), "effect_kind": "g"}
        pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        out |= {"se": pooled * np.sqrt(1 / len(a) + 1 / len(b)), "df": len(a) + len(b) - 2}
    seeds = a.index.intersection(b.index)
    if len(seeds) > 1:
        d = (a[seeds] - b[seeds]).to_numpy()
        if d.std(ddof=1) > 0:
            paired = stats.ttest_rel(a[seeds], b[seeds])
            (low, high), p = paired.confidence_interval(0.95), paired.pvalue
        else:  # every seed differs alike (an A/A control trains the same runs twice): no doubt either way
            (low, high), p = (d.mean(), d.mean()), 1.0 if d.mean() == 0 else 0.0
        out |= {"diff": d.mean(), "diff_ci_low": low, "diff_ci_high": high, "p_paired": p}
        out |= {"test": f"paired ({len(seeds)} seeds)", "p": p, "effect": d_z(d), "effect_kind": "d_z"}
        out |= {"se": d.std(ddof=1) / np.sqrt(len(d)), "df": len(d) - 1}
        if len(seeds) >= WILCOXON_MIN_PAIRS:
            out["p_wilcoxon"] = stats.wilcoxon(a[seeds], b[seeds]).pvalue
    return out


def detectable(se: float, df: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The minimum detectable effect of a two-sided t-test with standard error `se` and `df`
    degrees of freedom: the true difference δ it rejects with probability `power` at level
    `alpha`, from the noncentral t distribution (noncentrality δ / se)."""
    if not se > 0:
        return 0.0 if se == 0 else np.nan
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc: float) -> float:
        upper = stats.nct.sf(crit, df, nc)
        upper = 1.0 - stats.nct.cdf(crit, df, nc) if np.isnan(upper) else upper  # sf fails far in the tail
        return upper + np.nan_to_num(stats.nct.cdf(-crit, df, nc)) - power

    high = crit + 3.0
    while shortfall(high) < 0:  # power grows with the noncentrality: widen until it is reached
        high *= 2
    return optimize.brentq(shortfall, 0.0, high) * se


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """(mean a − mean b) / pooled std, times the small-sample correction 1 − 3 / (4(n_a + n_b) − 9)."""
    na, nb = len(a), len(b)
    pooled = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    return (a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (na + nb) - 9)) if pooled > 0 else np.nan


def d_z(d: np.ndarray) -> float:
    """Mean paired difference over its standard deviation (NaN when every pair differs alike)."""
    sd = d.std(ddof=1)
    return d.mean() / sd if sd > 0 else np.nan


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment over the non-NaN p-values (NaN stays NaN): the i-th smallest of m
    is multiplied by m − i (i from 0), made non-decreasing, capped at 1."""
    out = np.full(len(p), np.nan)
    present = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for rank, i in enumerate(present[np.argsort(p[present], kind="stable")]):
        running = max(running, min(1.0, (len(present) - rank) * p[i]))
        out[i] = running
    return out


def borderline(p_holm: float) -> bool:
    """Whether a Holm-adjusted p lies within a factor BORDERLINE of α, either side: there the last
    digits of the runs (a machine's kernels, the ops' reduction order) can flip the verdict."""
    return bool(ALPHA / BORDERLINE <= p_holm < ALPHA * BORDERLINE)


def verdict(diff: float, p_holm: float, lower: bool) -> str:
    if np.isnan(p_holm):
        return "too few runs"
    if p_holm >= ALPHA:
        return "no significant difference"
    return "better" if (diff < 0) == lower else "worse"

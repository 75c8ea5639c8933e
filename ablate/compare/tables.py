"""MLflow runs of a study → one row of statistics per variant, each tested against the baseline.

Per variant: n, mean, std, 95% t-interval, median. Against the baseline: the difference with
its 95% interval, Welch's t-test, and the paired t-test over the seeds both have (runs with
one seed share data order and initialisation RNG). The verdict uses the paired test when there
are pairs, else Welch's; its p-values are Holm-corrected over all comparisons of the table.
Each comparison also gets its minimum detectable effect: the difference its test would find
with 80% power, so that "no significant difference" says how small a difference it rules out.

A study's declared contrasts (pairs of variants) are a second family, Holm-corrected among
themselves, and its expectations a third: each names the verdict a comparison should reach,
which makes a study a regression test of the science (`ablate compare --check`).
"""

import json
import warnings

import numpy as np
import pandas as pd
from scipy import optimize, stats

from ablate import tracking
from ablate.errors import AblateError

# scipy warns of precision loss on groups whose values are all equal (a solved task's accuracy of 1);
# `against` handles them, so the warning says nothing to a reader of the table.
warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)

ALPHA = 0.05
POWER = 0.8  # for the minimum detectable effect
WILCOXON_MIN_PAIRS = 6  # at 5 pairs or fewer its smallest two-sided p is 0.0625: it can never reject
HIGHER_IS_BETTER = {"accuracy", "tokens_per_s", "mean_tokens_per_s"}
LOWER_IS_BETTER = {"train_time_s"}


def lower_is_better(metric: str, given: bool | None) -> bool:
    """The direction of a metric: as given, else known for losses, accuracy and speed."""
    if given is not None:
        return given
    if metric in HIGHER_IS_BETTER or metric.endswith("accuracy"):
        return False
    if metric in LOWER_IS_BETTER or "loss" in metric:
        return True
    raise AblateError(f"is a higher {metric!r} better or worse? say --higher-is-better or --lower-is-better")


def study_runs(uri: str, study: str | None) -> tuple[str, dict[str, str], pd.DataFrame, dict[str, int]]:
    """(study name, its experiment tags, its FINISHED final-phase trial runs as a frame, and per
    variant the number of seeds whose final run FAILED: diverged or out of memory)."""
    import mlflow

    c = tracking.client(uri)
    name = study or tracking.latest_study(c)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        raise AblateError(f"no study named {name!r} in {uri}")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="pandas", max_results=50_000)
    if not runs.empty:
        runs = runs[tracking.final_trials(runs)]
    finished = runs[runs["status"] == "FINISHED"] if not runs.empty else runs
    if finished.empty:
        raise AblateError(f"study {name!r} has no finished runs yet")
    return name, exp.tags, finished, failures(runs)


def failures(runs: pd.DataFrame) -> dict[str, int]:
    """variant → seeds whose final run FAILED and that have no FINISHED run: a failure is a
    result, not a silent gap in the table."""
    key = ["tags.ablate.variant", "tags.ablate.seed"]
    done = set(map(tuple, runs.loc[runs["status"] == "FINISHED", key].to_numpy()))
    failed = runs[runs["status"] == "FAILED"].drop_duplicates(key)
    failed = failed[np.array([tuple(k) not in done for k in failed[key].to_numpy()], dtype=bool)]
    return failed["tags.ablate.variant"].value_counts().to_dict()


def latest_per_seed(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One run per (variant, seed), the newest, and how many older ones were set aside
    (a study edited between runs leaves runs of older settings in its experiment)."""
    newest = runs.sort_values("start_time").drop_duplicates(["tags.ablate.variant", "tags.ablate.seed"], keep="last")
    return newest, len(runs) - len(newest)


def summarize(
    runs: pd.DataFrame,
    metric: str,
    baseline: str | None,
    order: list[str] | None = None,
    lower: bool = True,
    failed: dict[str, int] | None = None,
) -> pd.DataFrame:
    """The comparison table: one row per variant (see the module docstring); `failed` counts
    each variant's failed seeds, and a variant whose every run failed gets a row of its own."""
    failed = failed or {}
    column = f"metrics.{metric}"
    if column not in runs:
        known = sorted(
            c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any()
        )
        raise AblateError(f"no metric {metric!r} in these runs; logged metrics: {', '.join(known)}")
    variants = runs["tags.ablate.variant"]
    present = set(variants) | set(failed)
    order = [v for v in (order or []) if v in present] + sorted(present - set(order or []))
    baseline = baseline or order[0]
    if baseline not in set(variants):
        raise AblateError(f"baseline {baseline!r} has no finished runs; variants: {', '.join(order)}")

    base = values(runs, baseline, metric)
    rows = []
    for variant in order:
        own = values(runs, variant, metric)
        group = runs[variants == variant]
        row = {"variant": variant, **describe(own.to_numpy()), "failed": failed.get(variant, 0)}
        row["causal"] = _causal(group)
        row.update(
            against(own, base) if variant not in (baseline,) and len(own) else {"diff": 0.0 if len(own) else np.nan}
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    table = family(table, lower)
    table["verdict"] = [
        "baseline" if r.variant == baseline else "every run failed" if r.n == 0 else r.verdict
        for r in table.itertuples()
    ]
    return table


SHAPE = {  # column of the table ← the run's param
    "n_params": "n_params",
    "n_params_non_embedding": "n_params_non_embedding",
    "n_layers": "model.n_layers",
    "d_model": "model.d_model",
    "flops_per_token": "flops_per_token",
}


BUDGETED = {
    "n_params": "total params",
    "n_params_non_embedding": "non-embedding params",
    "flops_per_token": "forward FLOPs/token",
}


def budgeted(budget: dict | None) -> str:
    """The column (of SHAPE) a study's budget held equal; the non-embedding count without one."""
    budget = budget or {}
    if budget.get("flops_per_token"):
        return "flops_per_token"
    return "n_params" if budget.get("count") == "total" else "n_params_non_embedding"


def shapes(runs: pd.DataFrame, budget: dict | None) -> pd.DataFrame:
    """Per variant, what was built: both parameter counts, layers, width and forward FLOPs per
    token, and `budgeted`, the quantity the study's budget matched (the non-embedding count
    when the study has no budget), so that a reader compares what was held equal."""
    kind = budgeted(budget)
    rows = []
    for variant, group in runs.groupby("tags.ablate.variant", sort=False):
        row = {"variant": variant}
        for column, param in SHAPE.items():
            given = group.get(f"params.{param}", pd.Series(dtype=object)).dropna()
            row[column] = float(given.iloc[0]) if len(given) else np.nan
        rows.append(row)
    table = pd.DataFrame(rows, columns=["variant", *SHAPE])
    table["budgeted"] = table[kind]
    table["budgeted_as"] = BUDGETED[kind] + (" (the study's budget)" if budget else "")
    return table


def unequal_cost(table: pd.DataFrame, budget: dict | None) -> str | None:
    """A line when what the budget did not hold equal differs by more than 10% across variants:
    FLOPs per token at matched parameters (a no-FFN stack costs more compute per parameter), or
    parameters at matched FLOPs."""
    other = "n_params_non_embedding" if budgeted(budget) == "flops_per_token" else "flops_per_token"
    values = table.set_index("variant")[other].dropna()
    if len(values) < 2 or values.min() <= 0 or values.max() / values.min() <= 1.1:
        return None
    what = BUDGETED[other]
    low, high = values.idxmin(), values.idxmax()
    return (
        f"{what} differ by up to {values.max() / values.min() - 1:.0%} across variants ({low} {values[low]:,.0f}, "
        f"{high} {values[high]:,.0f}): a difference in the metric may come from that, not only from the architecture"
    )


def family(table: pd.DataFrame, lower: bool) -> pd.DataFrame:
    """Holm over the family's tests, the verdict of each, and its minimum detectable effect at
    the level Holm's first step asks of it (α over the number of tests)."""
    for name in COMPARISON_COLUMNS:
        if name not in table:
            table[name] = np.nan
    table["test"] = [t if isinstance(t, str) else "" for t in table["test"]]
    table["p_holm"] = holm(table["p"].to_numpy(dtype=float))
    m = max(int(table["p"].notna().sum()), 1)
    table["mde"] = [detectable(r.se, r.df, ALPHA / m) if r.df > 0 else np.nan for r in table.itertuples()]
    table["verdict"] = [verdict(r.diff, r.p_holm, lower) for r in table.itertuples()]
    return table


COMPARISON_COLUMNS = (
    "se",
    "df",
    "diff_ci_low",
    "diff_ci_high",
    "test",
    "p",
    "p_welch",
    "p_paired",
    "p_wilcoxon",
    "effect",
    "effect_kind",
)


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


def verdict(diff: float, p_holm: float, lower: bool) -> str:
    if np.isnan(p_holm):
        return "too few runs"
    if p_holm >= ALPHA:
        return "no significant difference"
    return "better" if (diff < 0) == lower else "worse"


def small_samples(table: pd.DataFrame) -> list[str]:
    """Variants with fewer than 3 runs: their intervals and tests say little."""
    return list(table.loc[table["n"] < 3, "variant"])


def _causal(group: pd.DataFrame) -> str:
    """'no' when any run of the variant failed the audit: its loss is not an honest next-token loss."""
    tags = group.get("tags.ablate.causal")
    if tags is None or tags.isna().all():
        return "unknown"
    return "no" if (tags == "false").any() else "yes"


def render(table: pd.DataFrame, fmt: str) -> str:
    """csv, markdown or json text of the table (the rich table is drawn by the CLI)."""
    if fmt == "csv":
        return table.to_csv(index=False).rstrip("\n")
    if fmt == "markdown":
        return table.to_markdown(index=False, floatfmt=".4g")
    if fmt == "json":
        return json.dumps(json.loads(table.to_json(orient="records", double_precision=15)), indent=2)
    raise AblateError(f"unknown format {fmt!r}")


def values(runs: pd.DataFrame, variant: str, metric: str) -> pd.Series:
    """The variant's final values of the metric, indexed by seed."""
    group = runs[runs["tags.ablate.variant"] == variant]
    return group.set_index(group["tags.ablate.seed"].astype(int))[f"metrics.{metric}"].dropna().astype(float)


def pairs_table(runs: pd.DataFrame, metric: str, pairs: list[tuple[str, str]], lower: bool = True) -> pd.DataFrame:
    """Each (a, b) tested as a against b, paired by seed, as one Holm family: a study's contrasts."""
    rows = []
    for a, b in pairs:
        own, other = values(runs, a, metric), values(runs, b, metric)
        row = {"variant": a, "against": b, "n": len(own.index.intersection(other.index))}
        row.update(against(own, other) if len(own) and len(other) else {"diff": np.nan})
        rows.append(row)
    table = family(pd.DataFrame(rows).reindex(columns=["variant", "against", "n", "diff", *COMPARISON_COLUMNS]), lower)
    table.loc[table["diff"].isna(), "verdict"] = "no runs"
    return table


def expectations(runs: pd.DataFrame, expected: list[dict], baseline: str, lower_of) -> pd.DataFrame:
    """Each expectation {variant, against (default the baseline), metric, verdict} tested, Holm over
    the expectations of each metric, and whether the verdict reached is the one expected
    ('same' is held by "no significant difference")."""
    frames = []
    for metric in dict.fromkeys(e["metric"] for e in expected):
        mine = [e for e in expected if e["metric"] == metric]
        if f"metrics.{metric}" not in runs:
            raise AblateError(f"an expectation names metric {metric!r}, which these runs did not log")
        pairs = [(e["variant"], e.get("against") or baseline) for e in mine]
        table = pairs_table(runs, metric, pairs, lower_of(metric))
        table.insert(0, "metric", metric)
        table["expected"] = [e["verdict"] for e in mine]
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["metric", "variant", "against", "verdict", "expected", "held"])
    table = pd.concat(frames, ignore_index=True)
    reached = table["verdict"].replace({"no significant difference": "same"})
    table["held"] = reached == table["expected"]
    return table


# A variant has not converged when its val loss still falls at more than this share of its average
# rate from the start (ln vocab) to the end, over the last two evals ...
STILL_FALLING = 0.5
# ... or when it ends within this share of the unigram entropy (it has barely left that plateau).
NEAR_UNIGRAM = 0.05


def convergence(history: pd.DataFrame, start_loss: float, unigram: float | None) -> pd.DataFrame:
    """Per variant, from its val-loss curves (mean over seeds at each eval): `slope`, the change of
    val loss per 100 steps over the last two evals; `pace`, that rate over its average rate since
    step 0 (the curve's own value there, else `start_loss`); and `converged` false, with `why`,
    when the pace exceeds STILL_FALLING or the final loss lies within NEAR_UNIGRAM of the
    unigram entropy."""
    rows = []
    for variant, group in history.groupby("variant", sort=False):
        mean = group.groupby("step")["value"].mean().sort_index()
        start_loss = mean.get(0, start_loss)
        mean = mean[mean.index > 0]
        row = {"variant": variant, "slope": np.nan, "pace": np.nan, "converged": True, "why": ""}
        if len(mean) >= 2:
            (s0, l0), (s1, l1) = list(mean.items())[-2:]
            rate = (l0 - l1) / (s1 - s0)
            row["slope"] = -100 * rate
            average = (start_loss - l1) / s1
            row["pace"] = rate / average if average > 0 else np.nan
            if row["pace"] > STILL_FALLING:
                row |= {"converged": False, "why": f"val loss still falling ({row['slope']:+.3f} per 100 steps)"}
        final = mean.iloc[-1] if len(mean) else np.nan
        if unigram and final > (1 - NEAR_UNIGRAM) * unigram:
            near = f"val loss {final:.3f} not {NEAR_UNIGRAM:.0%} below the unigram entropy {unigram:.3f}"
            row |= {"converged": False, "why": "; ".join(filter(None, [row["why"], near]))}
        rows.append(row)
    return pd.DataFrame(rows, columns=["variant", "slope", "pace", "converged", "why"])

"""The comparison's tables: one row per variant against the baseline (`summarize`), a study's
contrasts (`pairs_table`) and expectations (`expectations`), each a Holm family; what each
variant built (`shapes`), whether it converged (`convergence`); and their text forms."""

import json

import numpy as np
import pandas as pd

from ablate.compare.runs import SEED, VARIANT
from ablate.compare.stats import ALPHA, against, borderline, describe, detectable, holm, verdict
from ablate.core.errors import AblateError
from ablate.core.questions import Budget, Expectation
from ablate.core.schema import Param, Tag, metric_column, param_column, tag_column


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
    column = metric_column(metric)
    if column not in runs:
        known = sorted(
            c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any()
        )
        raise AblateError(f"no metric {metric!r} in these runs; logged metrics: {', '.join(known)}")
    variants = runs[VARIANT]
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
        row = {"variant": variant, **describe(own.to_numpy()), "failed": failed.get(variant, 0), "runs": len(group)}
        row["causal"] = _causal(group)
        row.update(
            against(own, base) if variant not in (baseline,) and len(own) else {"diff": 0.0 if len(own) else np.nan}
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    table = family(table, lower)
    table["verdict"] = [_verdict(r, baseline) for r in table.itertuples()]
    return table.drop(columns="runs")


def _verdict(r, baseline: str) -> str:
    """The test's verdict; where a variant has no value: every run failed, or its finished runs
    do not log the metric (decoding that stopped short of a context)."""
    if r.variant == baseline:
        return "baseline"
    if r.n == 0:
        return "n/a (not measured)" if r.runs else "every run failed"
    return r.verdict


SHAPE = {  # column of the table ← the run's param
    "n_params": Param.N_PARAMS,
    "n_params_non_embedding": Param.N_PARAMS_NON_EMBEDDING,
    "n_layers": f"{Param.MODEL}.n_layers",
    "d_model": f"{Param.MODEL}.d_model",
    "flops_per_token": Param.FLOPS_PER_TOKEN,
}


BUDGETED = {
    "n_params": "total params",
    "n_params_non_embedding": "non-embedding params",
    "flops_per_token": "forward FLOPs/token",
}


def budgeted(budget: Budget | None) -> str:
    """The column (of SHAPE) a study's budget held equal; the non-embedding count without one."""
    if budget is not None and budget.flops_per_token is not None:
        return "flops_per_token"
    return "n_params" if budget is not None and budget.count == "total" else "n_params_non_embedding"


def shapes(runs: pd.DataFrame, budget: Budget | None) -> pd.DataFrame:
    """Per variant, what was built: both parameter counts, layers, width and forward FLOPs per
    token, and `budgeted`, the quantity the study's budget matched (the non-embedding count
    when the study has no budget), so that a reader compares what was held equal."""
    kind = budgeted(budget)
    rows = []
    for variant, group in runs.groupby(VARIANT, sort=False):
        row = {"variant": variant}
        for column, param in SHAPE.items():
            given = group.get(param_column(param), pd.Series(dtype=object)).dropna()
            row[column] = float(given.iloc[0]) if len(given) else np.nan
        rows.append(row)
    table = pd.DataFrame(rows, columns=["variant", *SHAPE])
    table["budgeted"] = table[kind]
    table["budgeted_as"] = BUDGETED[kind] + (" (the study's budget)" if budget else "")
    return table


def unequal_cost(table: pd.DataFrame, budget: Budget | None, size: pd.Series | None = None) -> str | None:
    """A line when what the budget did not hold equal differs by more than 10% across variants
    (of one size, given each variant's `size`): FLOPs per token at matched parameters (a no-FFN
    stack costs more compute per parameter), or parameters at matched FLOPs."""
    other = "n_params_non_embedding" if budgeted(budget) == "flops_per_token" else "flops_per_token"
    values = table.set_index("variant")[other].dropna()
    groups = [group for _, group in values.groupby(size)] if size is not None else [values]
    values = max(groups, key=lambda g: g.max() / g.min() if len(g) > 1 and g.min() > 0 else 0.0, default=values)
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
    table["borderline"] = [borderline(p) for p in table["p_holm"]]
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


def small_samples(table: pd.DataFrame) -> list[str]:
    """Variants with fewer than 3 runs: their intervals and tests say little."""
    return list(table.loc[table["n"].between(1, 2), "variant"])  # none: "n/a", said in the table


def _causal(group: pd.DataFrame) -> str:
    """'no' when any run of the variant failed the audit: its loss is not an honest next-token loss."""
    tags = group.get(tag_column(Tag.CAUSAL))
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
    group = runs[runs[VARIANT] == variant]
    return group.set_index(group[SEED].astype(int))[metric_column(metric)].dropna().astype(float)


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


def expectations(runs: pd.DataFrame, expected: list[Expectation], baseline: str, lower_of) -> pd.DataFrame:
    """Each expectation tested, and whether the verdict reached is the one expected ('same' is held
    by "no significant difference", or with `within` by an interval inside the bound). Against
    another variant (default the baseline): Holm over the expectations of each metric; against
    the variant's own other metric (`than`): each its own test, paired by seed; n/a: held when
    the variant logged no value of the metric."""
    frames = []
    for metric in dict.fromkeys(e.metric for e in expected if e.than is None and e.verdict != "n/a"):
        mine = [e for e in expected if e.metric == metric and e.than is None and e.verdict != "n/a"]
        _logged(runs, metric)
        pairs = [(e.variant, e.against or baseline) for e in mine]
        table = pairs_table(runs, metric, pairs, lower_of(metric))
        frames.append(table.assign(metric=metric, expected=[e.verdict for e in mine], within=np.nan))
    for e in expected:
        if e.than is not None:
            frames.append(_against_itself(runs, e, lower_of(e.metric)))
        elif e.verdict == "n/a":
            logged = metric_column(e.metric) in runs and len(values(runs, e.variant, e.metric)) > 0
            row = {"metric": e.metric, "variant": e.variant, "against": "-", "verdict": "measured" if logged else "n/a"}
            frames.append(pd.DataFrame([row | {"expected": "n/a", "diff": np.nan, "within": np.nan}]))
    if not frames:
        return pd.DataFrame(columns=["metric", "variant", "against", "verdict", "expected", "within", "held"])
    table = pd.concat(frames, ignore_index=True)
    table["borderline"] = table["borderline"].astype("boolean").fillna(False).astype(bool)  # n/a: no test
    reached = table["verdict"].replace({"no significant difference": "same"})
    table["held"] = reached == table["expected"]
    bounded = table["within"].notna()
    table.loc[bounded, "held"] = table.loc[bounded, "verdict"].str.startswith("same within")
    return table


def _logged(runs: pd.DataFrame, metric: str) -> None:
    if metric_column(metric) not in runs:
        raise AblateError(f"an expectation names metric {metric!r}, which these runs did not log")


def _against_itself(runs: pd.DataFrame, e: Expectation, lower: bool) -> pd.DataFrame:
    """The variant's metric against its own `than`, paired by seed (val_loss_at/1024 against
    val_loss_at/128); with `within`, 'same within W' when the difference's 95% interval lies
    inside ± W of the mean of `than`."""
    _logged(runs, e.metric)
    _logged(runs, e.than)
    mine = runs[runs[VARIANT] == e.variant]
    at_other = mine.assign(**{VARIANT: f"its {e.than}", metric_column(e.metric): mine[metric_column(e.than)]})
    table = pairs_table(pd.concat([mine, at_other]), e.metric, [(e.variant, f"its {e.than}")], lower)
    table = table.assign(metric=e.metric, expected=e.verdict, within=np.nan if e.within is None else e.within)
    if e.within is not None and not table["diff"].isna().all():
        bound = e.within * abs(values(runs, e.variant, e.than).mean())
        inside = -bound <= table.loc[0, "diff_ci_low"] and table.loc[0, "diff_ci_high"] <= bound
        table.loc[0, "verdict"] = f"{'same within' if inside else 'not shown within'} {e.within:.0%}"
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

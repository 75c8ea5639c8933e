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

A scaling study's variants (NAME@SIZE) also get fitted laws of loss against size, their
intervals and crossings (`scaling`).

`gather` reads a study from the store into a `Comparison`; `console` draws it in the terminal,
`tables.render` as csv, markdown or json, `report` as plots and one HTML page.
"""

from dataclasses import dataclass, field

import pandas as pd

from ablate.compare import runs as store
from ablate.compare import scaling as laws
from ablate.compare.runs import VARIANT
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
from ablate.core.questions import Budget
from ablate.core.schema import Param, Tag, lower_is_better, param_column, tag_column
from ablate.tracking import store as tracking_store
from ablate.tracking.records import StudyRecord


@dataclass
class Comparison:
    """What `ablate compare` found: the variants' table, the contrasts, the expectations checked,
    the warnings (`notes`) and the facts a reader needs beside them (chance level, a cost the
    budget left unequal, convergence)."""

    study: str
    runs: pd.DataFrame
    table: pd.DataFrame
    contrasts: pd.DataFrame
    checks: pd.DataFrame
    metric: str
    baseline: str
    lower: bool
    budget: Budget | None
    curves: dict[str, pd.DataFrame]  # metric → its learning curves: the compared metric's and val_loss's
    notes: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    scaling: laws.Scaling | None = None  # a scaling study's laws (of a loss)


def gather(
    uri: str, study: str | None, metric: str, baseline: str | None, lower: bool, check: bool, at: list[float] = ()
) -> Comparison:
    """The study (default: the latest) compared on metric against the baseline (default: the
    study's); with check, a study that declares no expectations is an error. A scaling study's
    laws are also evaluated at the sizes `at` (non-embedding parameters)."""
    record, runs, failed = store.study_runs(uri, study)
    runs, set_aside = store.latest_per_seed(runs)
    if check and not record.expect:
        raise AblateError(f"--check: study {record.study!r} declares no expectations (expect: in its YAML)")
    client = tracking_store.client(uri)
    curves = {m: store.curves(client, runs, m) for m in dict.fromkeys([metric, store.CURVE_METRIC])}
    comparison = build(record, runs, curves, metric, baseline, lower, failed, at)
    if set_aside:
        comparison.notes.insert(
            0, f"{set_aside} older runs of a variant and seed set aside (the newest of each counts)"
        )
    return comparison


def build(
    record: StudyRecord,
    runs: pd.DataFrame,
    curves: dict[str, pd.DataFrame],
    metric: str,
    baseline: str | None,
    lower: bool,
    failed: dict[str, int] | None = None,
    at: list[float] = (),
) -> Comparison:
    """The comparison of a study's final runs (one per variant and seed) and their curves (metric →
    curves, val_loss's among them: convergence is judged on it), read with the study's record
    (variant order, baseline, contrasts, expectations, budget)."""
    failed = failed or {}
    table = summarize(runs, metric, baseline or record.baseline, record.variants, lower, failed)
    baseline = baseline or record.baseline
    contrasts = pairs_table(runs, metric, record.contrasts, lower)
    checks = expectations(runs, record.expect, baseline, lower_is_better)
    table = table.merge(convergence(curves[store.CURVE_METRIC], *store.loss_scale(runs)), on="variant", how="left")
    table = table.merge(shapes(runs, record.budget), on="variant", how="left")
    scaled, sized = tag_column(Tag.SCALED), tag_column(Tag.SIZE)
    size = runs.groupby(VARIANT)[sized].first() if scaled in runs and runs[scaled].notna().any() else None
    notes = []
    if failed:
        notes.append("failed runs (diverged or out of memory): " + ", ".join(f"{v} {n}" for v, n in failed.items()))
    if small := small_samples(table):
        notes.append(f"fewer than 3 runs for {', '.join(small)}: their intervals and tests say little")
    comparison = Comparison(
        record.study, runs, table, contrasts, checks, metric, baseline, lower, record.budget, curves, notes
    )
    comparison.facts = _facts(comparison, size)
    if size is not None and lower:
        pairs = _scaling_pairs(runs, contrasts, baseline)
        written = runs.groupby(VARIANT)[scaled].first()
        late = frozenset(written[v] for v in table.loc[table["converged"].eq(False), "variant"] if v in written)
        comparison.scaling = laws.fit(laws.points(runs, metric), metric, pairs, at, unconverged=late)
    return comparison


def _scaling_pairs(runs: pd.DataFrame, contrasts: pd.DataFrame, baseline: str) -> list[tuple[str, str]]:
    """The pairs of variants (as written) whose laws are compared: the study's contrasts, then
    every variant against the baseline."""
    written = runs.groupby(VARIANT)[tag_column(Tag.SCALED)].first()
    pairs = [(written[a], written[b]) for a, b in zip(contrasts["variant"], contrasts["against"])]
    pairs += [(v, written[baseline]) for v in written.unique() if v != written[baseline]]
    return list(dict.fromkeys(pairs))


def _facts(c: Comparison, size: pd.Series | None) -> list[str]:
    """Lines a reader needs beside the table: the chance level, a cost the budget did not hold
    equal (among the variants of one size, in a scaling study), and which variants did not converge."""
    facts = []
    chance = c.runs.get(param_column(Param.CHANCE_ACCURACY))
    if chance is not None and chance.notna().any():
        level = float(chance.dropna().astype(float).iloc[0])
        facts.append(f"chance level of val_accuracy: {level:.4f} (the best guess without the capability tested)")
    if (unequal := unequal_cost(c.table, c.budget, size)) is not None:
        facts.append(unequal)
    for r in c.table.itertuples():
        if r.converged is False:
            facts.append(
                f"{r.variant} has not converged: {r.why}; its verdict is about learning speed at this budget, "
                "not capacity"
            )
    return facts

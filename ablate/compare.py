"""MLflow runs of a study → one row of statistics per variant."""

import json

import numpy as np
import pandas as pd
from scipy import stats

from ablate import tracking
from ablate.errors import AblateError


def study_runs(uri: str, study: str | None) -> tuple[str, dict[str, str], pd.DataFrame]:
    """(study name, its experiment tags, its FINISHED runs as a frame) from any MLflow store."""
    import mlflow

    c = tracking.client(uri)
    name = study or tracking.latest_study(c)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        raise AblateError(f"no study named {name!r} in {uri}")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        output_format="pandas",
        max_results=50_000,
    )
    if runs.empty:
        raise AblateError(f"study {name!r} has no finished runs yet")
    return name, exp.tags, runs


def summarize(runs: pd.DataFrame, metric: str, baseline: str | None, order: list[str] | None = None) -> pd.DataFrame:
    """Per variant: n, mean, std, 95% t-interval, parameter count, difference to the baseline."""
    column = f"metrics.{metric}"
    if column not in runs:
        known = sorted(c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics."))
        raise AblateError(f"no metric {metric!r} in these runs; logged metrics: {', '.join(known)}")
    variants = runs["tags.ablate.variant"]
    order = [v for v in (order or []) if v in set(variants)] + sorted(set(variants) - set(order or []))
    rows = []
    for variant in order:
        group = runs[variants == variant]
        values = group[column].dropna().to_numpy(dtype=float)
        n = len(values)
        mean = values.mean() if n else np.nan
        std = values.std(ddof=1) if n > 1 else np.nan
        low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(values)) if n > 1 else (np.nan, np.nan)
        rows.append(
            {
                "variant": variant,
                "n": n,
                "mean": mean,
                "std": std,
                "ci95_low": low,
                "ci95_high": high,
                "n_params": int(group["params.n_params"].astype(int).iloc[0]),
                "causal": _causal(group),
            }
        )
    table = pd.DataFrame(rows)
    baseline = baseline or order[0]
    if baseline not in set(order):
        raise AblateError(f"baseline {baseline!r} has no finished runs; variants: {', '.join(order)}")
    table["diff_vs_baseline"] = table["mean"] - table.loc[table["variant"] == baseline, "mean"].iloc[0]
    return table


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
        return table.to_markdown(index=False, floatfmt=".4f")
    if fmt == "json":
        return json.dumps(json.loads(table.to_json(orient="records", double_precision=15)), indent=2)
    raise AblateError(f"unknown format {fmt!r}")

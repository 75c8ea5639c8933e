"""Plots of a comparison and one self-contained HTML page that holds them with the table.

Written under RESULTS/<study>/ and logged as artifacts of the study's parent MLflow run.
"""

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import pandas as pd

from ablate import tracking
from ablate.compare import Comparison
from ablate.compare.runs import CURVE_METRIC


def plot_curves(history: pd.DataFrame, order: list[str], path: Path) -> Path:
    """Per variant: the mean val loss over seeds at each eval, with a band of ± one std."""
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_prop_cycle(color=plt.get_cmap("tab20" if len(order) > 10 else "tab10").colors)
    for variant in order:
        by_step = history[history["variant"] == variant].groupby("step")["value"]
        mean, std = by_step.mean(), by_step.std().fillna(0.0)
        (line,) = ax.plot(mean.index, mean.values, label=f"{variant} (n={by_step.count().max()})")
        ax.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="step", ylabel=f"{CURVE_METRIC} (mean ± std over seeds)", title="validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_intervals(table: pd.DataFrame, runs: pd.DataFrame, metric: str, baseline: str, path: Path) -> Path:
    """Mean and 95% t-interval of the metric per variant, each seed's value as a small dot (an
    outlier seed shows), the baseline's mean as a dashed line."""
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(table) + 1.5))
    y = list(range(len(table)))[::-1]
    err = [table["mean"] - table["ci95_low"], table["ci95_high"] - table["mean"]]
    ax.errorbar(table["mean"], y, xerr=err, fmt="o", capsize=4, label="mean, 95% CI")
    for row, variant in zip(y, table["variant"]):
        seeds = runs.loc[runs["tags.ablate.variant"] == variant, f"metrics.{metric}"].dropna()
        ax.scatter(seeds, [row - 0.2] * len(seeds), s=12, color="black", alpha=0.6, zorder=3)
    ax.scatter([], [], s=12, color="black", alpha=0.6, label="one seed")
    ax.axvline(table.loc[table["variant"] == baseline, "mean"].iloc[0], linestyle="--", color="grey", label=baseline)
    ax.set_yticks(y, table["variant"])
    ax.set(xlabel=f"{metric}: each seed, and the mean with its 95% CI", title=f"{metric} by variant")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


RANK = "metrics.rank/block"


def plot_rank(runs: pd.DataFrame, order: list[str], path: Path) -> Path | None:
    """Per variant: the effective rank of the token representations after each block at the
    last eval, mean over seeds, by depth (None when no run logged it)."""
    blocks = [c for c in runs.columns if c.startswith(RANK) and c.removeprefix(RANK).isdigit()]
    columns = sorted(blocks, key=lambda c: int(c.removeprefix(RANK)))
    if not columns:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_prop_cycle(color=plt.get_cmap("tab20" if len(order) > 10 else "tab10").colors)
    for variant in order:
        means = runs.loc[runs["tags.ablate.variant"] == variant, columns].mean().dropna()
        if not means.empty:
            depth = [int(c.removeprefix(RANK)) + 1 for c in means.index]
            ax.plot(depth, means.values, marker="o", label=variant)
    ax.set(
        xlabel="after block", ylabel="effective rank (mean over seeds)", title="token representations' rank by depth"
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(client, c: Comparison, folder: Path) -> tuple[list[Path], bool]:
    """The plots and report.html in folder, and whether they were logged to the study's parent run
    (stores written before there were parent runs have none)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(c.table["variant"])
    images = [plot_intervals(c.table, c.runs, c.metric, c.baseline, folder / f"{c.metric}_intervals.png")]
    if not c.history.empty:
        images.append(plot_curves(c.history, order, folder / f"{CURVE_METRIC}_curves.png"))
    rank = plot_rank(c.runs, order, folder / "rank_by_depth.png")
    if rank is not None:
        images.append(rank)
    page = folder / "report.html"
    page.write_text(_html(c, images))
    parent = tracking.study_run(client, c.runs["experiment_id"].iloc[0])
    if parent is not None:
        for path in (*images, page):
            client.log_artifact(parent, str(path), artifact_path="report")
    return [*images, page], parent is not None


def _html(c: Comparison, images) -> str:
    """One page, readable offline: the images are inlined as data URIs."""
    figures = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in images
    )
    items = "".join(f"<li>{html.escape(n)}</li>" for n in c.notes + c.facts)
    direction = "lower" if c.lower else "higher"
    sections = [
        ("Contrasts", c.contrasts, "each pair tested paired by seed, Holm over the contrasts"),
        ("Against the baseline", c.table, "Holm over the table"),
        ("Expectations", c.checks, "each control's verdict, Holm over the expectations of each metric"),
    ]
    tables = "".join(
        f"<h2>{title}</h2><p>{about}</p>" + frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
        for title, frame, about in sections
        if len(frame)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(c.study)}: {html.escape(c.metric)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(c.study)}</h1>
<p>{html.escape(c.metric)} ({direction} is better) against <b>{html.escape(c.baseline)}</b>. Verdicts at α = 0.05
after Holm's correction within each table; paired t-test by seed where both variants have the seed,
else Welch's; effect d_z (paired) or Hedges' g; mde: the difference the test would detect with 80%
power at Holm's strictest level.</p>
{f"<ul>{items}</ul>" if items else ""}
{tables}
{figures}
</body></html>
"""

"""The report's figures past the training length: a metric against the evaluation length, one
line per variant (its mean, each seed a dot) with the training length marked and "n/a" where a
variant was not measured (a learned table ends); and the needle heatmap, exact match by length
and needle depth, as RULER and the needle-in-a-haystack papers draw it."""

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.compare import Comparison
from ablate.compare.figures import panels, plt, save
from ablate.compare.runs import VARIANT
from ablate.core.schema import Metric, Param, metric_column, param_column

DEPTH = re.compile(re.escape(metric_column(Metric.VAL_EXACT_AT)) + r"(\d+)/depth_(\d+)$")


def lengths(runs: pd.DataFrame, prefix: str) -> dict[int, str]:
    """Length → the column of `prefix` at that length (val_loss_at/1024), in increasing order."""
    pattern = re.compile(re.escape(metric_column(prefix)) + r"(\d+)$")
    found = {int(m.group(1)): col for col in runs.columns if (m := pattern.match(col))}
    return dict(sorted(found.items()))


def plot(c: Comparison, prefix: str, path: Path) -> Path | None:
    """`prefix` (val_loss_at/, val_exact_at/) against length; None unless two lengths were measured."""
    columns = lengths(c.runs, prefix)
    if len(columns) < 2:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.cm.tab20.colors
    missing = 0
    for i, variant in enumerate(c.table["variant"]):
        rows = c.runs[c.runs[VARIANT] == variant]
        means = rows[list(columns.values())].astype(float).mean()
        measured = [(n, means[col]) for n, col in columns.items() if not np.isnan(means[col])]
        colour = colours[i % len(colours)]
        if measured:
            n_runs = int(rows[columns[measured[0][0]]].notna().sum())
            ax.plot(*zip(*measured), marker="o", color=colour, label=f"{variant} (n={n_runs})")
            for n, col in columns.items():
                ax.scatter([n] * len(rows), rows[col], s=10, color=colour, alpha=0.4)
        for n, col in columns.items():
            if np.isnan(means[col]):
                ax.annotate("n/a", (n, 0.03 + 0.04 * missing), xycoords=ax.get_xaxis_transform(), color=colour)
        missing += any(np.isnan(means[col]) for col in columns.values())
    for trained in sorted(
        pd.to_numeric(c.runs.get(param_column(f"{Param.MODEL}.context")), errors="coerce").dropna().unique()
    ):
        ax.axvline(trained, linestyle="--", color="grey", label=f"trained at {int(trained)}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(columns), [str(n) for n in columns])
    name = prefix.rstrip("/")
    ax.set(xlabel="evaluation length (tokens)", ylabel=f"{name}: each seed and the mean", title=f"{name} by length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return save(fig, path)


def plot_needles(c: Comparison, path: Path) -> Path | None:
    """One panel per variant: exact match (mean over seeds) by evaluation length and needle depth;
    None without depth metrics."""
    cells = {(int(m.group(1)), int(m.group(2))): col for col in c.runs.columns if (m := DEPTH.match(col))}
    if not cells:
        return None
    lengths_, depths = sorted({n for n, _ in cells}), sorted({d for _, d in cells})
    variants = list(c.table["variant"])
    fig, axes = panels(len(variants), sharey=True)
    for ax, variant in zip(axes, variants):
        rows = c.runs[c.runs[VARIANT] == variant]
        grid = np.array([[_mean(rows, cells.get((n, d))) for n in lengths_] for d in depths])
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (r, k), value in np.ndenumerate(grid):
            label, colour = (
                ("n/a", "grey") if np.isnan(value) else (f"{value:.2f}", "white" if value < 0.6 else "black")
            )
            ax.text(k, r, label, ha="center", va="center", fontsize="x-small", color=colour)
        ax.set_xticks(range(len(lengths_)), [str(n) for n in lengths_])
        ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths])
        ax.set(title=variant, xlabel="evaluation length")
    axes[0].set_ylabel("needle depth")
    fig.suptitle("needle retrieval (exact match) by length and depth")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.colorbar(image, cax=fig.add_axes((0.92, 0.15, 0.015, 0.7)), label="exact match")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean(rows: pd.DataFrame, column: str | None) -> float:
    return np.nan if column is None or column not in rows else float(rows[column].astype(float).mean())

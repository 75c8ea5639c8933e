"""The report's plots, each a function of the comparison and a file to write: the contrasts'
intervals, the variants' intervals, scaling laws, loss by state size and by decoding cost, the
learning curves and rank by depth (small multiples, a panel per mixer family)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FormatStrFormatter

from ablate.compare import Comparison, cells, scaling
from ablate.compare.figures import panels, plt, save
from ablate.compare.runs import VARIANT
from ablate.compare.stats import POWER
from ablate.core.schema import LOWER_IS_BETTER_PREFIXES, Metric, Param, Tag, metric_column, param_column, tag_column

RANK = metric_column(Metric.RANK)
VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red"}  # anything else: grey


def families(c: Comparison) -> dict[str, list[str]]:
    """Mixer family → its variants, in table order (a variant's family is its mixer)."""
    family, mixer = tag_column(Tag.FAMILY), param_column(f"{Param.MODEL}.mixer")
    column = family if family in c.runs else mixer
    of = c.runs.groupby(VARIANT)[column].first() if column in c.runs else pd.Series(dtype=object)
    grouped: dict[str, list[str]] = {}
    for variant in c.table["variant"]:
        grouped.setdefault(str(of.get(variant, variant)), []).append(variant)
    return grouped


def plot_contrasts(c: Comparison, path: Path) -> Path | None:
    """Each contrast a − b: the paired mean difference with its 95% interval, coloured by verdict,
    over a grey band of ± its minimum detectable effect (a difference inside it could go unseen)."""
    rows = c.contrasts[c.contrasts["diff"].notna()]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.9))
    y = list(range(len(rows)))[::-1]
    for row, r in zip(y, rows.itertuples(index=False)):
        if not math.isnan(r.mde):
            ax.barh(row, 2 * r.mde, left=-r.mde, height=0.6, color="grey", alpha=0.2, linewidth=0)
        colour = "grey" if r.borderline else VERDICT_COLOURS.get(r.verdict, "grey")  # no firm colour near α
        low, high = r.diff - r.diff_ci_low, r.diff_ci_high - r.diff
        xerr = None if math.isnan(low) else [[low], [high]]
        ax.errorbar(r.diff, row, xerr=xerr, fmt="o", capsize=4, color=colour)
    ax.axvline(0, color="black", linewidth=0.8)
    verdicts = {row[0]: row[-1].replace(" (", "\n(") for row in cells.contrasts(c)[1]}  # marks on a line of their own
    ax.set_yticks(
        y, [f"{name}: {verdicts[name]}" for name in (f"{r.variant} vs {r.against}" for r in rows.itertuples())]
    )
    better = "lower" if c.lower else "higher"
    ax.set(
        xlabel=f"Δ {c.metric}: first − second, paired by seed, with its 95% CI\n({better} is better for the first)",
        title=f"contrasts (grey: ± the difference detected with {POWER:.0%} power)",
    )
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def plot_scaling(c: Comparison, path: Path) -> Path:
    """Log-log, one panel per axis: each seed's loss at each size (dots, with the min–max band of
    the seeds), each variant's fitted law over its measured range, and the 95% band of the
    bootstrap laws; dashed on to the pair crossings found beyond the measured range."""
    s = c.scaling
    laws = s.laws.set_index(["variant", "axis"])
    fig, axes = plt.subplots(1, len(scaling.AXES), figsize=(12, 4.6), squeeze=False)
    for ax, axis in zip(axes[0], scaling.AXES):
        far = s.crossings.loc[s.crossings["axis"] == axis, "at"].max()
        for variant, own in s.points.groupby("variant", sort=False):
            by_size = own.groupby(axis)["loss"]
            (dots,) = ax.plot(own[axis], own["loss"], ".", alpha=0.5)
            colour = dots.get_color()
            ax.fill_between(by_size.min().index, by_size.min(), by_size.max(), color=colour, alpha=0.15)
            xs = np.geomspace(own[axis].min(), own[axis].max(), 100)
            reps = s.replicates[variant, axis]
            if reps:
                low, high = np.percentile([r(xs) for r in reps], [2.5, 97.5], axis=0)
                ax.fill_between(xs, low, high, color=colour, alpha=0.1, linewidth=0)
            law = laws.loc[(variant, axis)]
            if not math.isnan(law["E"]):
                fitted = scaling.Law(law["E"], law["A"], law["alpha"])
                ax.plot(xs, fitted(xs), color=colour, label=f"{variant}: α={law['alpha']:.2f}")
                if far > xs[-1]:
                    beyond = np.geomspace(xs[-1], far * 1.5, 50)
                    ax.plot(beyond, fitted(beyond), color=colour, linestyle="--")
        ax.set(xscale="log", yscale="log", xlabel=scaling.AXES[axis], title=f"{s.metric} against {scaling.AXES[axis]}")
        for ticks in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):  # a loss spans < 1 decade
            ticks(FormatStrFormatter("%.2f"))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small")
    axes[0][0].set_ylabel(f"{s.metric}: seeds, fit and its 95% band (dashed: extrapolated)")
    return save(fig, path)


def plot_intervals(c: Comparison, path: Path) -> Path:
    """Mean and 95% t-interval of the metric per variant, each seed's value as a small dot (an
    outlier seed shows), the baseline's mean as a dashed line."""
    table = c.table
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(table) + 1.5))
    y = list(range(len(table)))[::-1]
    err = [table["mean"] - table["ci95_low"], table["ci95_high"] - table["mean"]]
    ax.errorbar(table["mean"], y, xerr=err, fmt="o", capsize=4, label="mean, 95% CI")
    for row, variant in zip(y, table["variant"]):
        seeds = c.runs.loc[c.runs[VARIANT] == variant, metric_column(c.metric)].dropna()
        ax.scatter(seeds, [row - 0.2] * len(seeds), s=12, color="black", alpha=0.6, zorder=3)
    ax.scatter([], [], s=12, color="black", alpha=0.6, label="one seed")
    baseline = table.loc[table["variant"] == c.baseline, "mean"].iloc[0]
    ax.axvline(baseline, linestyle="--", color="grey", label=c.baseline)
    ax.set_yticks(y, table["variant"])
    ax.set(xlabel=f"{c.metric}: each seed, and the mean with its 95% CI", title=f"{c.metric} by variant")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, path)


def plot_state(c: Comparison, path: Path) -> Path | None:
    """The metric against each model's recurrent state (numbers per sequence a decoder carries,
    log scale), one line per family through its variants, each seed a dot: Zoology's and Based's
    recall-against-state figure. A family whose state grows with the sequence (softmax
    attention) is a dashed line at its best mean. None unless some family has two state sizes."""
    column, metric = param_column(Param.STATE_SIZE), metric_column(c.metric)
    if column not in c.runs:
        return None
    runs = c.runs.assign(state=pd.to_numeric(c.runs[column], errors="coerce"))  # "None": grows
    grouped = {f: runs[runs[VARIANT].isin(vs)] for f, vs in families(c).items()}
    if not any(rows["state"].nunique() >= 2 for rows in grouped.values()):
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for family, rows in grouped.items():
        if rows["state"].isna().all():
            means = rows.groupby(VARIANT)[metric].mean()
            best = means.min() if c.lower else means.max()
            ax.axhline(best, linestyle="--", color="grey", label=f"{family} (state grows with the sequence)")
            continue
        means = rows.groupby("state")[metric].mean().sort_index()
        (line,) = ax.plot(means.index, means.values, marker="o", label=family)
        ax.scatter(rows["state"], rows[metric], s=10, color=line.get_color(), alpha=0.5)
    ax.set_xscale("log")
    ax.set(xlabel="recurrent state (numbers per sequence)", ylabel=f"{c.metric}: each seed and the mean")
    ax.set_title(f"{c.metric} against state size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return save(fig, path)


def plot_cost(c: Comparison, path: Path) -> Path | None:
    """Quality against what the model costs to run: the compared metric (val_loss where that is
    itself a cost) against the ms per decoded token at the longest context two variants or
    more reached, each seed a dot and each variant's mean a labelled point: the trade-off a
    study with `decode:` measures. None without decode figures."""
    prefix = Metric.DECODE_MS_PER_TOKEN
    contexts = sorted(
        (int(col.removeprefix(metric_column(prefix))), col)
        for col in c.runs
        if col.startswith(metric_column(prefix)) and c.runs.groupby(VARIANT)[col].count().gt(0).sum() >= 2
    )
    if not contexts:
        return None
    context, cost = contexts[-1]
    quality = Metric.VAL_LOSS if c.metric.startswith(LOWER_IS_BETTER_PREFIXES) else c.metric
    runs = c.runs.dropna(subset=[cost, metric_column(quality)])
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.cm.tab20.colors  # twenty, so that a study of up to twenty variants repeats none
    for i, (variant, rows) in enumerate(runs.groupby(VARIANT, sort=False)):
        colour = colours[i % len(colours)]
        ax.plot(rows[cost], rows[metric_column(quality)], "o", color=colour, alpha=0.4, markersize=4)
        x, y = rows[cost].mean(), rows[metric_column(quality)].mean()
        ax.plot(x, y, "o", color=colour, markersize=8)
        ax.annotate(str(variant), (x, y), textcoords="offset points", xytext=(5, 4), fontsize="x-small")
    ax.set_xscale("log")
    for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis(FormatStrFormatter("%g"))
    ax.set(xlabel=f"ms per decoded token at context {context:,} (batch 1)", ylabel=f"{quality}: each seed and the mean")
    missing = sorted(set(c.runs[VARIANT]) - set(runs[VARIANT]))
    ax.set_title(f"{quality} against decoding cost" + (f" ({', '.join(missing)}: not reached)" if missing else ""))
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_curves(c: Comparison, metric: str, path: Path) -> Path:
    """One panel per family: each variant's metric at every eval, mean over seeds, with a band
    from the lowest to the highest seed."""
    grouped, history = families(c), c.curves[metric]
    fig, axes = panels(len(grouped), sharey=True)
    for ax, (family, variants) in zip(axes, grouped.items()):
        for variant in variants:
            by_step = history[history["variant"] == variant].groupby("step")["value"]
            if not by_step.ngroups:
                continue
            mean = by_step.mean()
            (line,) = ax.plot(mean.index, mean.values, marker=".", label=f"{variant} (n={by_step.count().max()})")
            ax.fill_between(mean.index, by_step.min(), by_step.max(), color=line.get_color(), alpha=0.2)
        ax.set(title=family, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    axes[0].set_ylabel(f"{metric}: mean, min–max band")
    return save(fig, path)


def plot_rank(c: Comparison, path: Path) -> Path | None:
    """One panel per family: the effective rank of the token representations after each block at
    the last eval, mean over seeds, by block index (None when no run logged it)."""
    blocks = [col for col in c.runs.columns if col.startswith(RANK) and col.removeprefix(RANK).isdigit()]
    columns = sorted(blocks, key=lambda col: int(col.removeprefix(RANK)))
    if not columns:
        return None
    grouped = families(c)
    fig, axes = panels(len(grouped), sharey=True)
    for ax, (family, variants) in zip(axes, grouped.items()):
        for variant in variants:
            means = c.runs.loc[c.runs[VARIANT] == variant, columns].mean().dropna()
            if not means.empty:
                ax.plot([int(col.removeprefix(RANK)) for col in means.index], means.values, marker="o", label=variant)
        ax.set(title=family, xlabel="block (0: the first)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    axes[0].set_ylabel("effective rank after the block")
    return save(fig, path)

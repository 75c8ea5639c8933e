"""A comparison as one self-contained HTML page with its plots, written under RESULTS/<study>/
and logged as artifacts of the study's parent MLflow run.

The page opens on the study's answer: each declared contrast's paired difference with its
interval and minimum detectable effect, then the tables (formatted as in the terminal), then
learning curves and rank by depth as small multiples, one panel per mixer family; where the runs
were scored past their training length, the metric by length and the needle heatmap (`by_length`).
"""

import base64
import html
from pathlib import Path

from ablate.compare import Comparison, by_length, cells, scaling
from ablate.compare.plots import (
    VERDICT_COLOURS,
    plot_contrasts,
    plot_cost,
    plot_curves,
    plot_intervals,
    plot_rank,
    plot_scaling,
    plot_state,
)
from ablate.compare.runs import SEED, VARIANT
from ablate.compare.stats import POWER
from ablate.core.schema import (
    Metric,
)
from ablate.tracking import store
from ablate.tracking.views import run_page

OFF_THE_PAGE = ("std", "median", "test")  # columns of cells.variants the page leaves to csv, json and the terminal


def write(c: Comparison, folder: Path, ui: str | None = None) -> list[Path]:
    """The plots and report.html in folder, the page last. With `ui`, the MLflow UI's address,
    each variant's runs are links."""
    folder.mkdir(parents=True, exist_ok=True)
    name = _file_name(c.metric)
    answer = plot_contrasts(c, folder / f"{name}_contrasts.png")
    images = [plot_intervals(c, folder / f"{name}_intervals.png")]
    for prefix in (Metric.VAL_LOSS_AT, Metric.VAL_EXACT_AT):
        if (image := by_length.plot(c, prefix, folder / f"{_file_name(prefix)}by_length.png")) is not None:
            images.append(image)
    if (needles := by_length.plot_needles(c, folder / "needles_by_length_and_depth.png")) is not None:
        images.append(needles)
    if (state := plot_state(c, folder / f"{name}_by_state.png")) is not None:
        images.append(state)
    if (cost := plot_cost(c, folder / "quality_by_decode_cost.png")) is not None:
        images.append(cost)
    if c.scaling is not None:  # a scaling study's answer is its laws: first
        answer, images = plot_scaling(c, folder / f"{name}_scaling.png"), [p for p in (answer, *images) if p]
    for metric, history in c.curves.items():  # the compared metric's, then val_loss's where that is another
        if not history.empty:
            images.append(plot_curves(c, metric, folder / f"{_file_name(metric)}_curves.png"))
    if (rank := plot_rank(c, folder / "rank_by_depth.png")) is not None:
        images.append(rank)
    page = folder / "report.html"
    page.write_text(_html(c, answer, images, ui))
    return [p for p in (answer, *images) if p is not None] + [page]


def _file_name(metric: str) -> str:
    """A metric's name as a file's: decode_ms_per_token/4096 → decode_ms_per_token_4096."""
    return metric.replace("/", "_")


def log(client, c: Comparison, written: list[Path]) -> bool:
    """Log the report's files to the study's parent run; False for stores written before there
    were parent runs."""
    parent = store.study_run(client, c.runs["experiment_id"].iloc[0])
    if parent is not None:
        store.log_files(client, parent, written, "report")
    return parent is not None


def _html(c: Comparison, answer: Path | None, images: list[Path], ui: str | None) -> str:
    """One page, readable offline: the images are inlined as data URIs."""
    direction = "lower" if c.lower else "higher"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in c.notes + c.facts)
    tables = "".join(
        f"<h2>{title}</h2><p>{html.escape(about)}</p>{_table(table)}" for title, table, about in _sections(c, ui)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(c.study)}: {html.escape(c.metric)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1250px; }}
table {{ border-collapse: collapse; font-size: 0.8em; width: 100%; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.4em; text-align: right; }}
th {{ background: #f3f3f3; }}
td.text, th.text {{ text-align: left; }}
td.worse {{ color: #b00; }} td.better {{ color: #070; }}
img {{ max-width: 100%; }}
details {{ text-align: left; }}
</style></head><body>
<h1>{html.escape(c.study)}</h1>
<p>{html.escape(c.metric)} ({direction} is better) against <b>{html.escape(c.baseline)}</b>. Verdicts at α = 0.05
after Holm's correction within each table; paired t-test by seed where both variants have the seed,
else Welch's; effect d_z (paired) or Hedges' g; MDE: the difference the test would detect with {POWER:.0%}
power at Holm's strictest level.</p>
{_figure(answer) if answer else ""}
{f"<ul>{notes}</ul>" if notes else ""}
{tables}
{"".join(_figure(p) for p in images)}
</body></html>
"""


def _sections(c: Comparison, ui: str | None) -> list[tuple[str, cells.Table, str]]:
    """The page's tables, each with its title and what it holds: a scaling study's laws first,
    then the contrasts, every variant against the baseline, and the expectations."""
    columns, rows = cells.variants(c)
    keep = [i for i, name in enumerate(columns) if name not in OFF_THE_PAGE]
    links = _run_links(c, ui)
    variants = ([columns[i] for i in keep] + ["runs"], [[r[i] for i in keep] + [links[r[0]]] for r in rows])
    sections = []
    if c.scaling is not None:
        notes = scaling.convergence_notes(c.scaling) + scaling.bound_notes(c.scaling)
        bounds = " ".join(["fitted per variant; 95% bootstrap intervals over seeds.", *notes])
        sections += [("Scaling laws", cells.laws(c.scaling), bounds)]
        sections += [("Where the laws cross", cells.crossings(c.scaling), "EXTRAPOLATED: beyond the measured sizes")]
        if len(c.scaling.predictions):
            predicted = cells.predictions(c.scaling)
            sections += [("Predicted by the laws", predicted, "EXTRAPOLATED: beyond the measured sizes")]
    if len(c.contrasts):
        about = "each pair tested paired by seed, Holm over the contrasts"
        sections += [("Contrasts: the study's questions", cells.contrasts(c), about)]
    about = "Holm over the table; std, median and the test used: ablate compare"
    sections += [(f"Every variant against {c.baseline}", variants, about)]
    if len(c.checks):
        about = "each control's verdict, Holm over the expectations"
        sections += [("Expectations (controls)", cells.expectations(c), about)]
    return sections


def _table(table: cells.Table) -> str:
    columns, rows = table
    text = [col in cells.LEFT or col == "runs" for col in columns]
    head = "".join(f'<th class="{"text" if t else "num"}">{html.escape(col)}</th>' for col, t in zip(columns, text))
    body = "".join(
        "<tr>" + "".join(_cell(value, col, t) for value, col, t in zip(row, columns, text)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: str, column: str, text: bool) -> str:
    if column == "runs":  # already HTML
        return f'<td class="text">{value}</td>'
    verdict = value.split(" ")[0] if column == "verdict" else ""
    classes = " ".join(filter(None, ["text" if text else "num", verdict if verdict in VERDICT_COLOURS else ""]))
    return f'<td class="{classes}">{html.escape(value)}</td>'


def _run_links(c: Comparison, ui: str | None) -> dict[str, str]:
    """variant → its runs, one per seed: links into the MLflow UI when its address is known, else
    the run ids (`ablate ui` opens the store; a run's page is /#/experiments/EXP/runs/RUN_ID)."""
    out = {variant: "-" for variant in c.table["variant"]}
    for variant, group in c.runs.groupby(VARIANT):
        items = []
        group = group.sort_values(SEED, key=lambda seeds: seeds.astype(int))
        for seed, run, exp in zip(group[SEED], group["run_id"], group["experiment_id"]):
            label = f"seed {seed}"
            if ui:
                items.append(f'<a href="{html.escape(ui + run_page(exp, run))}">{label}</a>')
            else:
                items.append(f"{label}: <code>{run}</code>")
        runs = f"{len(items)} run" + "s" * (len(items) != 1)
        out[variant] = f"<details><summary>{runs}</summary>{'<br>'.join(items)}</details>"
    return out


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'

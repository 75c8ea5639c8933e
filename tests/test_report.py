"""The report page: the study's answer (its contrasts) first, tables formatted as in the terminal,
curves and ranks one panel per family, and every variant's runs within reach."""

import io
from pathlib import Path

import pandas as pd
import pytest
import yaml
from rich.console import Console

from ablate.compare import build, console, plots, report
from ablate.core.config import StudyConfig
from ablate.core.questions import Budget
from ablate.plan.forms import sized
from ablate.tracking.records import StudyRecord
from tests.test_compare import BASE, PAIRED, frame

WORSE = [v + 0.3 for v in BASE]  # worse than BASE, seed by seed
VARIANTS = {"mha": BASE, "mha-no-ffn": WORSE, "aft": PAIRED, "aft-no-ffn": BASE}
CONTRASTS = [["mha-no-ffn", "mha"], ["aft-no-ffn", "aft"]]


def study(contrasts=CONTRASTS, metric="val_loss", variants=VARIANTS):
    runs = frame({name: ([0, 1, 2, 3, 4], values) for name, values in variants.items()})
    runs["metrics.val_accuracy"] = 1 - runs["metrics.val_loss"] / 10
    runs["run_id"] = [f"run{i:02d}" for i in range(len(runs))]
    runs["experiment_id"] = "7"
    runs["tags.ablate.family"] = runs["tags.ablate.variant"].str.removesuffix("-no-ffn")
    runs["params.n_params_non_embedding"] = "294912"
    runs["metrics.rank/block0"], runs["metrics.rank/block1"] = 20.0, 30.0
    history = pd.DataFrame(
        [
            {"variant": name, "seed": str(seed), "step": step, "value": 7.6 - step / 100 - values[seed] / 10}
            for name, values in variants.items()
            for seed in range(5)
            for step in range(0, 301, 30)
        ]
    )
    curves = {metric: history.assign(value=1 - history["value"] / 10), "val_loss": history}
    record = StudyRecord(
        study="ffn",
        variants=list(variants),
        baseline=next(iter(variants)),
        contrasts=contrasts,
        budget=Budget(params=294912, count="non_embedding"),
    )
    return build(record, runs, curves, metric, None, lower=metric == "val_loss")


@pytest.fixture
def page(tmp_path):
    written = report.write(study(), tmp_path, ui="http://mlflow.example:5000")
    assert written[0].name == "val_loss_contrasts.png" and written[-1].name == "report.html"
    return written[-1].read_text()


def test_the_page_opens_on_the_contrasts_plot_then_their_table(page):
    first_table = page.index("<table")
    assert page.index('alt="val_loss_contrasts"') < page.index("<h2>Contrasts") < first_table
    assert page.index("Contrasts: the study") < page.index("Every variant against mha")
    assert "mha-no-ffn vs mha" in page and "aft-no-ffn vs aft" in page


def test_tables_are_formatted_as_in_the_terminal_not_raw_columns(page):
    for raw in ("ci95_low", "diff_ci_high", "p_welch", "p_paired", "n_params_non_embedding", "effect_kind"):
        assert raw not in page
    assert "294,912" in page and "params non-emb (budget)" in page  # separators; what the budget held
    assert 'class="text worse">worse' in page  # mha-no-ffn is worse than mha, and marked so
    assert "e+" not in page.split("<figure>")[0].replace("data:", "")  # no 2.9e+05 in the tables


def test_every_variants_runs_are_linked_to_the_mlflow_ui(page):
    for i in range(20):
        assert f'href="http://mlflow.example:5000/#/experiments/7/runs/run{i:02d}"' in page
    assert page.count("<summary>5 runs</summary>") == 4


def test_without_a_ui_the_run_ids_are_shown(tmp_path):
    page = report.write(study(), tmp_path)[-1].read_text()
    assert "href=" not in page and "seed 0: <code>run00</code>" in page


def test_curves_and_ranks_have_one_panel_per_family(tmp_path):
    c = study()
    assert plots.families(c) == {"mha": ["mha", "mha-no-ffn"], "aft": ["aft", "aft-no-ffn"]}
    for path in (plots.plot_curves(c, "val_loss", tmp_path / "curves.png"), plots.plot_rank(c, tmp_path / "r.png")):
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_study_compared_on_accuracy_draws_its_accuracy_curves_and_val_loss_beside(tmp_path):
    names = [p.name for p in report.write(study(metric="val_accuracy"), tmp_path)]
    assert names.index("val_accuracy_curves.png") < names.index("val_loss_curves.png")
    assert [p.name for p in report.write(study(), tmp_path / "loss")].count("val_loss_curves.png") == 1


def test_a_study_without_contrasts_has_no_contrast_plot_or_section(tmp_path):
    written = report.write(study(contrasts=[]), tmp_path)
    assert "val_loss_contrasts.png" not in [p.name for p in written]
    assert "Contrasts" not in written[-1].read_text()


def test_the_terminal_table_fits_120_columns_one_line_a_row_and_wide_shows_every_column():
    """The four longest variant names of the shipped studies, not-converged marks and a leak mark."""
    shipped = [sized(StudyConfig(**yaml.safe_load(path.read_text()))) for path in Path("studies").glob("*.yaml")]
    names = sorted({v.name for config in shipped for v in config.variants}, key=len)[-4:]
    long = dict(zip(names, VARIANTS.values()))
    c = study(contrasts=[[names[1], names[0]], [names[3], names[2]]], variants=long)
    c.table.loc[3, "causal"] = "no"
    out = io.StringIO()
    console.print_comparison(c, Console(file=out, width=120))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines if "│" in line or "━" in line) <= 120
    rows = [line.rstrip() for line in lines if "│" in line]
    assert len(rows) == len(c.contrasts) + len(c.table)  # no row wraps onto a second line
    assert all(row.endswith(("*", "*!")) for row in rows)  # the synthetic curves still fall
    assert sum(row.endswith("!") for row in rows) == 2  # the leaking variant's row and its contrast
    wide = io.StringIO()
    console.print_comparison(c, Console(file=wide, width=400), wide=True)
    for column in ("failed", "std", "median", "MDE", "test", "effect", "causal"):
        assert column in wide.getvalue()


def test_a_study_of_state_sizes_plots_its_metric_against_them(tmp_path):
    c = study(metric="val_accuracy")
    assert plots.plot_state(c, tmp_path / "none.png") is None  # no family with two state sizes
    sizes = {"mha": "None", "mha-no-ffn": "None", "aft": "96", "aft-no-ffn": "384"}
    c.runs["params.state_size"] = c.runs["tags.ablate.variant"].map(sizes)
    names = [p.name for p in report.write(c, tmp_path)]
    assert "val_accuracy_by_state.png" in names


def test_a_study_scored_past_its_training_length_plots_the_metric_by_length_and_the_needle_grid(tmp_path):
    """One line per variant through the lengths it was measured at, "n/a" where its table ended
    (no value logged), the training length marked; and exact match by length and depth."""
    from ablate.compare import by_length

    c = study(metric="val_loss")
    assert by_length.plot(c, "val_loss_at/", tmp_path / "none.png") is None  # scored at one length only
    c.runs["params.model.context"] = "128"
    for n in (128, 256, 1024):
        c.runs[f"metrics.val_loss_at/{n}"] = c.runs["metrics.val_loss"] + n / 1000
        for depth in (0, 50, 100):
            c.runs[f"metrics.val_exact_at/{n}/depth_{depth}"] = 1 - n / 2048
    learned = c.runs["tags.ablate.variant"] == "aft"
    c.runs.loc[learned, ["metrics.val_loss_at/256", "metrics.val_loss_at/1024"]] = float("nan")
    assert list(by_length.lengths(c.runs, "val_loss_at/")) == [128, 256, 1024]
    names = [p.name for p in report.write(c, tmp_path)]
    assert {"val_loss_at_by_length.png", "needles_by_length_and_depth.png"} <= set(names)
    assert "val_exact_at_by_length.png" not in names  # no val_exact_at/T of its own was logged
    page = (tmp_path / "report.html").read_text()
    assert 'alt="val_loss_at_by_length"' in page and 'alt="needles_by_length_and_depth"' in page

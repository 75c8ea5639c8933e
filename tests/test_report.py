"""The report page: the study's answer (its contrasts) first, tables formatted as in the terminal,
curves and ranks one panel per family, and every variant's runs within reach."""

import json

import pandas as pd
import pytest

from ablate.compare import build, report
from tests.test_compare import BASE, PAIRED, frame

WORSE = [v + 0.3 for v in BASE]  # worse than BASE, seed by seed
VARIANTS = {"mha": BASE, "mha-no-ffn": WORSE, "aft": PAIRED, "aft-no-ffn": BASE}
CONTRASTS = [["mha-no-ffn", "mha"], ["aft-no-ffn", "aft"]]


def study(contrasts=CONTRASTS):
    runs = frame({name: ([0, 1, 2, 3, 4], values) for name, values in VARIANTS.items()})
    runs["run_id"] = [f"run{i:02d}" for i in range(len(runs))]
    runs["experiment_id"] = "7"
    runs["tags.ablate.family"] = runs["tags.ablate.variant"].str.removesuffix("-no-ffn")
    runs["params.n_params_non_embedding"] = "294912"
    runs["metrics.rank/block0"], runs["metrics.rank/block1"] = 20.0, 30.0
    history = pd.DataFrame(
        [
            {"variant": name, "seed": str(seed), "step": step, "value": 7.6 - step / 100 - values[seed] / 10}
            for name, values in VARIANTS.items()
            for seed in range(5)
            for step in range(0, 301, 30)
        ]
    )
    tags = {
        "ablate.variants": json.dumps(list(VARIANTS)),
        "ablate.baseline": "mha",
        "ablate.contrasts": json.dumps(contrasts),
        "ablate.budget": json.dumps({"params": 294912, "count": "non_embedding"}),
    }
    return build("ffn", tags, runs, history, "val_loss", None, lower=True)


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
    assert report.families(c) == {"mha": ["mha", "mha-no-ffn"], "aft": ["aft", "aft-no-ffn"]}
    for plot in (report.plot_curves, report.plot_rank):
        path = plot(c, tmp_path / f"{plot.__name__}.png")
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_study_without_contrasts_has_no_contrast_plot_or_section(tmp_path):
    written = report.write(study(contrasts=[]), tmp_path)
    assert "val_loss_contrasts.png" not in [p.name for p in written]
    assert "Contrasts" not in written[-1].read_text()

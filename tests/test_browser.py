"""What a researcher sees, rendered by a real browser (headless Chromium, driven by playwright):
the runs table `ablate ui` opens and the report `ablate compare` writes. Asserted from the
rendered page, not from the API; each page's screenshot is written under the study's results
folder (screenshots/), so that a failing run can be looked at.

Without Chromium these tests skip, unless ABLATE_REQUIRE_BROWSER=1 (set by .ci/run)."""

import json
import re
import subprocess
import sys
import time

import pytest

from ablate.cli import main
from tests.conftest import WINDOW, clean_env

pytestmark = pytest.mark.slow  # a browser on the MLflow UI

COLUMNS = ("variant", "seed", "val_loss", "val_accuracy", "n_params_non_embedding", "flops_per_token")
COLUMNS += ("mean_tokens_per_s", "Dataset")


@pytest.fixture(scope="module")
def ui(finished, tmp_path_factory):
    """`ablate ui` on the finished tiny study: the URL it printed, and the server's address."""
    _, results, _ = finished
    log = tmp_path_factory.mktemp("ui") / "server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "ui", "--results", str(results), "--study", "tiny"],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=clean_env(),
    )
    try:
        url = server.stdout.readline().strip().removeprefix("MLflow UI: ")
        assert url.startswith("http://"), f"ablate ui printed no URL: {log.read_text()[-2000:]}"
        yield url, re.match(r"http://[^/]+", url).group(0)
    finally:
        server.terminate()
        server.wait(timeout=30)


def shoot(page, finished, name: str) -> str:
    folder = finished[1] / "screenshots"
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"))
    return f"(screenshot: {folder / name}.png)"


def test_ui_opens_on_every_final_run_with_its_variant_seed_and_metrics(browser, ui, finished, capsys, own_store):
    url, _ = ui
    page = browser.new_page(viewport=WINDOW)
    page.goto(url)
    page.wait_for_selector('[role="gridcell"][col-id="params.`variant`"]', timeout=120_000)
    time.sleep(1)  # the rest of the rows and columns are drawn in the same pass
    seen = shoot(page, finished, "ui")
    nav = page.eval_on_selector_all("nav a, nav [role=button]", "els => els.map(e => e.textContent.trim())")
    assert "Models" in nav and "Sessions" not in nav, f"not in model-training mode: {nav} {seen}"
    for row in page.locator('[role=gridcell][col-id="metrics.`val_loss`"]').all():
        assert row.bounding_box()["x"] < WINDOW["width"], f"val_loss off the first screen {seen}"
    rows = page.eval_on_selector_all(
        ".ag-center-cols-container [role=row]",
        """rows => rows.map(row => Object.fromEntries(Array.from(row.querySelectorAll('[role=gridcell]'))
            .map(cell => [cell.getAttribute('col-id'), cell.textContent.trim()])))""",
    )
    shown = [(r["params.`variant`"], r["params.`seed`"], float(r["metrics.`val_loss`"])) for r in rows]
    assert sorted(v for v, s, _ in shown) == [v for v, s, _ in shown], f"not sorted by variant {seen}"
    assert sorted((v, s) for v, s, _ in shown) == [("aft", "0"), ("aft", "1"), ("mha", "0"), ("mha", "1")], seen
    headers, datasets = set(), set()
    for _ in range(20):  # the grid draws the columns in view only: scroll through them all
        headers |= set(page.eval_on_selector_all("[role=columnheader]", "els => els.map(e => e.textContent.trim())"))
        datasets |= set(
            page.eval_on_selector_all('[col-id="attributes.`Dataset`"]', "els => els.map(e => e.textContent)")
        )
        page.eval_on_selector(".ag-body-horizontal-scroll-viewport", "el => { el.scrollLeft += 300 }")
        time.sleep(0.2)
    assert set(COLUMNS) <= headers, f"missing columns {set(COLUMNS) - headers} {seen}"
    assert any(re.match(r"stdlib \([0-9a-f]{16}\)", d.strip()) for d in datasets), f"{datasets} {seen}"  # its digest

    assert main(["compare", "--results", str(finished[1]), "--study", "tiny", "--format", "json", "--no-report"]) == 0
    for row in json.loads(capsys.readouterr().out):
        values = [loss for variant, _, loss in shown if variant == row["variant"]]
        assert sum(values) / len(values) == pytest.approx(row["mean"], abs=1e-9), seen


def test_report_opens_on_its_contrast_plot_fits_the_window_and_links_every_run(
    browser, ui, finished, capsys, own_store
):
    _, base = ui
    _, results, _ = finished
    assert main(["compare", "--results", str(results), "--tracking-uri", base, "--study", "tiny"]) == 0
    capsys.readouterr()
    page = browser.new_page(viewport=WINDOW)
    page.goto((results / "tiny" / "report.html").as_uri())
    page.wait_for_load_state("load")
    seen = shoot(page, finished, "report")
    plot = page.locator('img[alt="val_loss_contrasts"]').bounding_box()
    assert plot["y"] + plot["height"] <= WINDOW["height"], f"the contrast plot is not on the first screen {seen}"
    assert page.evaluate("document.documentElement.scrollWidth") <= WINDOW["width"], seen
    images = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
    assert len(images) == 4 and all(images), seen
    links = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
    assert len(links) == 4, seen
    for link in links:
        run = link.rsplit("/", 1)[1]
        page.goto(link)
        page.wait_for_selector(f"text={run}", timeout=60_000)  # the run page shows its own id
        assert page.locator("text=/seed[01]/").count() > 0, f"{link} shows no trial run {shoot(page, finished, 'run')}"

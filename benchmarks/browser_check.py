"""Look at what a researcher sees, in a real browser: the MLflow UI on a study's store and the
study's report.html, each rendered by headless Chromium into a screenshot and a DOM dump.

    python benchmarks/browser_check.py --results results --study ffn_necessity [--out browser-check]

Exit 0 when the report opens on its contrasts plot (for a study with contrasts), links every
variant's runs and fits a 1400-px window, and the MLflow runs table (opened in model-training
mode) shows the study's runs; 1 when one did not; 77 (SKIPPED, printed) when no Chromium is
installed (Debian: apt-get install chromium).
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow

from ablate import tracking

# appended to a copy of the report: the page's width against the window's, written into the DOM
MEASURE = "<script>document.body.dataset.fits = document.documentElement.scrollWidth <= window.innerWidth</script>"
FLAGS = [  # no network beyond localhost is needed, so none of Chromium's background traffic
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--virtual-time-budget=20000",  # let the single-page MLflow app fetch and draw its runs
]


def chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def render(browser: str, url: str, png: Path, profile: Path) -> str:
    """Screenshot of url into png; returns the page's DOM after its scripts ran."""
    base = [browser, *FLAGS, f"--user-data-dir={profile}"]
    subprocess.run([*base, f"--screenshot={png}", url], check=True, capture_output=True, timeout=120)
    return subprocess.run([*base, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120).stdout


def wait_for(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--study", required=True)
    p.add_argument("--out", type=Path, default=Path("browser-check"))
    args = p.parse_args()
    browser = chromium()
    if browser is None:
        print("SKIPPED: no Chromium found (apt-get install chromium, or set CHROMIUM)")
        return 77
    report = (args.results / args.study / "report.html").resolve()
    if not report.exists():
        print(f"no {report}: run `ablate compare --results {args.results} --study {args.study}` first")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{args.results.resolve() / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(args.study)
    runs = client.search_runs([experiment.experiment_id])
    variants = {r.data.tags.get("ablate.variant") for r in runs} - {None}
    run_names = {r.info.run_name for r in runs}  # the study's parent run is named after the study

    failures = []
    measured = args.out / "report-measured.html"
    measured.write_text(report.read_text().replace("</body>", MEASURE + "</body>"))
    dom = render(browser, measured.resolve().as_uri(), args.out / "report.png", args.out / "profile")
    missing = sorted(v for v in variants if v not in dom)
    contrasts = experiment.tags.get("ablate.contrasts", "[]") != "[]"
    answer_first = not contrasts or -1 < dom.find("_contrasts") < dom.find("<table")
    linked = dom.count("<summary>") >= len(variants)
    fits = 'data-fits="true"' in dom
    print(
        f"report.html: {len(dom):,} characters of DOM, screenshot {args.out / 'report.png'}; variants missing: {missing}; "
        f"contrasts plot first: {answer_first}; every variant's runs linked: {linked}; fits the window: {fits}"
    )
    if missing or "<img" not in dom or not (answer_first and linked and fits):
        failures.append("report")

    port = 5000 + os.getpid() % 1000
    ui = subprocess.Popen(
        ["ablate", "ui", "--results", str(args.results), "--port", str(port)], stdout=subprocess.DEVNULL
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        url = f"http://127.0.0.1:{port}{tracking.runs_page(experiment.experiment_id)}"
        dom = render(browser, url, args.out / "mlflow.png", args.out / "profile")
        # children are folded under their parent: the top level shows the study's parent run
        top = args.study in run_names and f">{args.study}<" in dom
        counted = re.search(r">(\d+)</\w+>\s*matching runs", dom)
        print(
            f"MLflow UI runs table: {len(dom):,} characters of DOM, screenshot {args.out / 'mlflow.png'}; "
            f"study run at the top level: {top}; matching runs: {counted and counted.group(1)} of {len(runs)} in the store"
        )
        if not top or not counted or int(counted.group(1)) != len(runs):
            failures.append("mlflow ui")
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)
    print("FAILED: " + ", ".join(failures) if failures else "OK: the report and the MLflow runs table rendered")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

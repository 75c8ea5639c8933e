"""Optuna search per variant: pruning, the best setting reused by the final phase, resuming."""

import json
import re
import subprocess
import sys
import urllib.request

import mlflow
import optuna
import pytest

from ablate.cli import main
from ablate.plan.space import SearchConfig
from ablate.run import search
from tests.conftest import TINY_STUDY, WINDOW, clean_env, write_study

SEARCH = """\
search:
  space: {lr: {loguniform: [1.0e-5, 3.0e-1]}}
  trials: 5
  search_steps: 20
  sampler: random
  pruner_startup: 1
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    directory = tmp_path_factory.mktemp("search")
    text = TINY_STUDY.replace("eval_every: 15", "eval_every: 5").replace("seeds: [0, 1]", "seeds: [0]") + SEARCH
    text = text.replace(
        "  - {name: aft, model: {mixer: aft-simple, ffn: false}}",
        "  - {name: aft, model: {mixer: aft-simple, ffn: false}, search: false}",
    )
    study = write_study(directory, text)
    results = directory / "results"
    store = ["--results", str(results), "--tracking-uri", f"sqlite:///{results / 'mlflow.db'}"]
    assert main(["run", str(study), *store]) == 0
    return study, results, store


def optuna_study(results):
    return optuna.load_study(study_name="tiny/mha", storage=f"sqlite:///{results / 'optuna.db'}")


def runs(results):
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["tiny"])


def test_search_prunes_and_logs_every_trial_as_a_nested_run(searched):
    _, results, _ = searched
    trials = optuna_study(results).trials
    states = {t.number: t.state.name for t in trials}
    assert len(trials) == 5 and "PRUNED" in states.values() and "COMPLETE" in states.values()
    frame = runs(results)
    search = frame[frame["tags.ablate.phase"] == "search"]
    assert dict(zip(search["tags.ablate.optuna_trial"].astype(int), search["tags.ablate.optuna_state"])) == states
    assert set(search["tags.ablate.variant"]) == {"mha"}  # aft says search: false
    parent = frame.loc[(frame["tags.ablate.role"] == "variant") & (frame["tags.ablate.variant"] == "mha"), "run_id"]
    assert set(search["tags.mlflow.parentRunId"]) == set(parent)
    study_run = frame.loc[frame["tags.ablate.role"] == "study", "run_id"]
    assert set(frame.loc[frame["tags.ablate.role"] == "variant", "tags.mlflow.parentRunId"]) == set(study_run)
    assert set(search["params.train.steps"]) == {"20"}
    client = mlflow.MlflowClient()
    for _, run in search.iterrows():  # a pruned trial stopped at the eval that pruned it
        last = max(m.step for m in client.get_metric_history(run["run_id"], "val_loss"))
        assert (last < 20) == (run["tags.ablate.optuna_state"] == "PRUNED")


def test_final_phase_trains_with_the_best_setting(searched):
    _, results, _ = searched
    best = optuna_study(results).best_params["lr"]
    frame = runs(results)
    final = frame[frame["tags.ablate.phase"] == "final"]
    lrs = dict(zip(final["tags.ablate.variant"], final["params.train.lr"]))
    assert lrs == {"mha": str(best), "aft": "0.002"}
    assert set(final["params.train.steps"]) == {"30"}
    parent = frame[(frame["tags.ablate.role"] == "variant") & (frame["tags.ablate.variant"] == "mha")]
    assert parent["tags.ablate.best.lr"].iloc[0] == str(best)


def test_compare_counts_only_the_final_runs(searched, capsys):
    _, _, store = searched
    capsys.readouterr()
    assert main(["compare", *store, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["variant"]: r["n"] for r in rows} == {"mha": 1, "aft": 1}  # 5 search runs of mha not counted


def test_rerun_resumes_the_search_and_caps_its_trials(searched, capsys):
    study, results, store = searched
    before = len(runs(results))
    capsys.readouterr()
    assert main(["run", str(study), *store]) == 0
    out = capsys.readouterr().out
    assert "search mha: 5 of 5 trials done in tiny/mha" in out and "2 of 2 trials already finished" in out
    assert len(runs(results)) == before and len(optuna_study(results).trials) == 5

    study.write_text(study.read_text().replace("trials: 5", "trials: 7"))
    assert main(["run", str(study), *store]) == 0
    assert len(optuna_study(results).trials) == 7
    assert "search mha: 5 of 7 trials done" in capsys.readouterr().out


def test_a_lost_trial_is_queued_again_with_its_params_and_run(tmp_path):
    """A trial whose worker is gone is failed and queued again by Optuna's heartbeat retry; the
    next ask() takes the copy, with the same params and the MLflow run to resume."""
    rdb = search.storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    config = SearchConfig(space={"lr": {"loguniform": [1e-4, 1e-2]}}, search_steps=10)
    study = search.open_study("s/v", rdb, config)
    lost = study.ask()
    lr = lost.suggest_float("lr", 1e-4, 1e-2, log=True)
    lost.set_user_attr("ablate.run_id", "abc")
    search.retry(study, rdb, lost.number)
    search.retry(study, rdb, lost.number)  # a second look finds it ended: no second copy
    again = study.ask()
    assert study.trials[lost.number].state.name == "FAIL" and again.number == lost.number + 1
    assert again.params == {"lr": lr} and again.user_attrs["ablate.run_id"] == "abc"
    assert len(study.trials) == 2


def test_the_tpe_sampler_searches_after_its_random_start(tmp_path, own_store):
    tpe = SEARCH.replace("sampler: random", "sampler: tpe\n  tpe_startup: 2").replace("trials: 5", "trials: 4")
    text = TINY_STUDY.replace("seeds: [0, 1]", "seeds: [0]").replace(
        "  - {name: aft, model: {mixer: aft-simple, ffn: false}}\n", ""
    )
    study, results = write_study(tmp_path, text + tpe.replace("pruner_startup: 1", "pruner: none")), tmp_path / "r"
    assert main(["run", str(study), "--results", str(results)]) == 0
    trials = optuna_study(results).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({t.params["lr"] for t in trials}) == 4 and all(1e-5 <= t.params["lr"] <= 0.3 for t in trials)


@pytest.mark.slow
def test_ui_optuna_serves_the_dashboard_on_the_search_storage(searched, browser):
    """`ablate ui --optuna`: Optuna's own dashboard lists each variant's search, and its page
    draws the search's trials."""
    _, results, _ = searched
    server = subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "ui", "--optuna", "--results", str(results)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )
    try:
        url = re.match(r"Optuna dashboard: (http://\S+/dashboard)$", server.stdout.readline().strip()).group(1)
        studies = json.load(urllib.request.urlopen(url.replace("/dashboard", "/api/studies")))["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny/mha"]
        page = browser.new_page(viewport=WINDOW)
        page.goto(url)
        page.wait_for_selector("text=tiny/mha", timeout=60_000)
        page.screenshot(path=str(results / "optuna-dashboard.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_ui_optuna_without_a_storage_is_one_line(tmp_path, capsys):
    assert main(["ui", "--optuna", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("ablate: error: no Optuna storage at sqlite:///")


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_workers_that_open_a_search_at_once_draw_distinct_points(tmp_path, kind):
    """Two workers open the variant's study before either asks (the race of `--workers 2`): each
    slot draws its own point, so equal tuning effort is not spent twice on one setting."""
    config = SearchConfig(space={"lr": {"loguniform": [1e-5, 0.3]}}, trials=3, search_steps=10, sampler=kind)
    rdb = search.storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    opened = [search.open_study("s/mha", rdb, config, slot) for slot in range(3)]
    points = [study.ask().suggest_float("lr", 1e-5, 0.3, log=True) for study in opened]
    assert len(set(points)) == 3

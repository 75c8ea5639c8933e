"""The whole path a researcher walks: plan → run → MLflow store → compare → ui."""

import json
import math
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest
import scipy.stats

import ablate
from ablate.cli import main
from ablate.mixers import registry
from ablate.tracking.store import study_frame
from tests.conftest import TINY_STUDY, clean_env, run_ablate, write_study


def store_of(results: Path) -> str:
    return f"sqlite:///{results / 'mlflow.db'}"


def all_runs(uri: str, experiment: str):
    """Every run of the experiment, as mlflow.search_runs lays them out (read from this store,
    whatever the process's tracking URI)."""
    return study_frame(uri, mlflow.MlflowClient(uri).get_experiment_by_name(experiment).experiment_id)


def trial_runs(uri: str, experiment: str):
    """The study's trial runs, without the parent runs that group them."""
    runs = all_runs(uri, experiment)
    return runs[runs["tags.ablate.role"].isna()]


def test_run_logs_one_finished_run_per_trial(finished):
    study, results, stdout = finished
    runs = trial_runs(store_of(finished[1]), "tiny")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert set(runs["tags.ablate.phase"]) == {"final"}
    pairs = sorted(zip(runs["tags.ablate.variant"], runs["tags.ablate.seed"]))
    assert pairs == [("aft", "0"), ("aft", "1"), ("mha", "0"), ("mha", "1")]
    assert set(runs["tags.ablate.study"]) == {"tiny"}
    assert all(math.isfinite(v) for v in runs["metrics.val_loss"])
    assert set(runs["params.model.d_model"]) == {"32"} and set(runs["params.train.steps"]) == {"30"}
    assert runs["params.data.fingerprint"].nunique() == 1
    assert (runs["params.flops_per_token"].astype(float) > 0).all()
    assert set(runs["params.budget"]) == {"none"}  # the tiny study sets no budget
    assert set(runs.loc[runs["tags.ablate.variant"] == "aft", "params.state_size"]) == {"96"}  # 3 sums × 32 channels

    client = mlflow.MlflowClient(store_of(results))
    run_id = runs["run_id"].iloc[0]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [0, 15, 30]  # 0: the untrained model
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(5, 31, 5))
    artifact = client.download_artifacts(run_id, "study.yaml", str(results / "dl"))
    assert Path(artifact).read_text() == study.read_text()
    assert str(results / "artifacts" / "tiny") in runs["artifact_uri"].iloc[0]

    assert "unigram entropy" in stdout and "ablate compare" in stdout
    assert re.search(r"start-up: [\d.]+s from the command to its first training step \(building the data", stdout)
    # the study bar shows the running trial's loss and speed, not empty fields
    assert re.search(r"study .* step 120/120 loss \d\.\d{3} [\d,]+ tok/s .* ETA 0:00:00", stdout)


def test_variant_parents_hold_their_aggregates_and_every_run_the_tags_to_group_by(finished):
    runs = all_runs(store_of(finished[1]), "tiny")
    trials, parents = runs[runs["tags.ablate.role"].isna()], runs[runs["tags.ablate.role"] == "variant"]
    assert sorted(parents["tags.ablate.variant"]) == ["aft", "mha"]
    for _, parent in parents.iterrows():
        values = trials.loc[trials["tags.ablate.variant"] == parent["tags.ablate.variant"], "metrics.val_loss"]
        low, high = scipy.stats.t.interval(0.95, 1, loc=values.mean(), scale=scipy.stats.sem(values))
        assert parent["metrics.val_loss"] == pytest.approx(values.mean(), abs=1e-12)
        assert (parent["metrics.val_loss_ci95_low"], parent["metrics.val_loss_ci95_high"]) == pytest.approx((low, high))
        assert parent["metrics.n_seeds"] == 2
    expected = {"mha": ("mha", "true"), "aft": ("aft-simple", "false")}
    for frame in (trials, parents):
        for _, run in frame.iterrows():
            assert (run["tags.ablate.family"], run["tags.ablate.ffn"]) == expected[run["tags.ablate.variant"]]


def test_runs_carry_the_contrasts_of_their_variant(tmp_path):
    from ablate.plan import study
    from ablate.tracking.records import grouping_tags

    path = write_study(tmp_path, TINY_STUDY + "contrasts: [[aft, mha]]\n")
    planned = study.load(path)
    assert grouping_tags(planned, "aft")["ablate.contrast"] == "aft vs mha"
    assert grouping_tags(planned, "mha")["ablate.contrast"] == "aft vs mha"


def test_compare_json_means_equal_the_runs(finished, capsys):
    _, results, _ = finished
    assert main(["compare", "--results", str(results), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    runs = trial_runs(store_of(finished[1]), "tiny")
    assert [r["variant"] for r in rows] == ["mha", "aft"]  # the study's order; mha is the baseline
    for row in rows:
        values = runs.loc[runs["tags.ablate.variant"] == row["variant"], "metrics.val_loss"]
        assert row["n"] == 2
        assert row["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert row["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert row["ci95_low"] < row["mean"] < row["ci95_high"]
    assert rows[0]["diff"] == 0 and rows[0]["verdict"] == "baseline"
    assert rows[1]["diff"] == pytest.approx(rows[1]["mean"] - rows[0]["mean"])


def test_compare_marks_a_study_stopped_while_its_loss_still_falls(finished, capsys):
    """30 steps leave every variant learning fast: each is marked, in the table and below it."""
    _, results, _ = finished
    store = ["--results", str(results), "--tracking-uri", f"sqlite:///{results / 'mlflow.db'}"]
    assert main(["compare", *store, "--study", "tiny", "--format", "json", "--no-report"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(not r["converged"] and "still falling" in r["why"] and r["pace"] > 0.5 for r in rows)
    assert main(["compare", *store, "--study", "tiny", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "aft has not converged: val loss still falling" in out and "mha has not converged" in out

    for fmt in ("table", "csv", "markdown"):
        assert main(["compare", "--results", str(results), "--study", "tiny", "--format", fmt]) == 0
        assert "aft" in capsys.readouterr().out


def test_compare_shows_the_counted_params_the_shape_and_the_flops_of_each_variant(finished, capsys):
    _, results, _ = finished
    assert main(["compare", "--results", str(results), "--study", "tiny", "--format", "json", "--no-report"]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    runs = trial_runs(store_of(finished[1]), "tiny")
    for variant, row in rows.items():
        run = runs[runs["tags.ablate.variant"] == variant].iloc[0]
        assert row["budgeted"] == int(run["params.n_params_non_embedding"]) and row["budgeted_as"] == (
            "non-embedding params"  # the tiny study has no budget
        )
        assert (row["n_layers"], row["d_model"]) == (1, 32)
        assert row["flops_per_token"] == float(run["params.flops_per_token"])
    assert main(["compare", "--results", str(results), "--study", "tiny", "--no-report", "--wide"]) == 0
    out = capsys.readouterr().out
    assert "params non-emb" in out and "layers×d" in out and "FLOPs/tok" in out and "1×32" in out
    assert f"{rows['mha']['budgeted']:,.0f}" in out
    assert "forward FLOPs/token differ by up to" in out  # aft costs less than mha here


def test_compare_writes_plots_and_a_self_contained_report(finished, capsys):
    _, results, _ = finished
    assert main(["compare", "--results", str(results), "--study", "tiny"]) == 0
    assert "report.html" in capsys.readouterr().err
    folder = results / "tiny"
    page = (folder / "report.html").read_text()
    assert "<table" in page and page.count("data:image/png;base64,") == 4 and 'src="http' not in page
    assert "ci95_low" not in page and "p_welch" not in page  # formatted as in the terminal
    for png in ("val_loss_contrasts.png", "val_loss_curves.png", "val_loss_intervals.png", "rank_by_depth.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    study_run = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`ablate.role` = 'study'"
    )
    logged = {a.path for a in client.list_artifacts(study_run[0].info.run_id, "report")}
    assert logged == {
        f"report/{name}"
        for name in (
            "report.html",
            "val_loss_contrasts.png",
            "val_loss_curves.png",
            "val_loss_intervals.png",
            "rank_by_depth.png",
        )
    }


def test_rerun_skips_finished_trials(finished):
    study, results, _ = finished
    proc = run_ablate("run", str(study), "--results", str(results))
    assert proc.returncode == 0, proc.stderr
    assert "4 of 4 trials already finished" in proc.stdout
    assert len(trial_runs(store_of(finished[1]), "tiny")) == 4


# `ablate` with Python's Ctrl-C handler installed first: a suite started in the background inherits
# SIGINT ignored, and a Python started with it ignored never installs the handler itself.
ABLATE_WITH_CTRL_C = [
    sys.executable,
    "-c",
    (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from ablate.cli import main; sys.exit(main(sys.argv[1:]))"
    ),
]


@pytest.mark.parametrize(
    ("sig", "code", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
@pytest.mark.slow
def test_ctrl_c_or_sigterm_marks_the_runs_killed_hands_the_claims_back_and_a_rerun_finishes(tmp_path, sig, code, said):
    """SIGTERM (what schedulers, `timeout` and systemd send) ends a study as Ctrl-C does."""
    study = write_study(tmp_path, TINY_STUDY.replace("steps: 30", "steps: 250"))
    proc = subprocess.Popen(
        [*ABLATE_WITH_CTRL_C, "run", str(study), "--results", str(tmp_path / "results")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    for line in proc.stdout:
        if line.startswith("trial 1/4"):
            break
    proc.send_signal(sig)  # during the second trial
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and said in err and "Traceback" not in err
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    statuses = [r.info.status for r in runs if "ablate.role" not in r.data.tags]
    assert statuses.count("FINISHED") == 1 and set(statuses) <= {"FINISHED", "KILLED"}
    assert {r.info.status for r in runs if "ablate.role" in r.data.tags} == {"KILLED"}  # the parents too
    claims = sqlite3.connect(tmp_path / "results" / "optuna.db").execute("select state from ablate_claims")
    assert "running" not in {state for (state,) in claims}  # handed back: open for whoever comes next

    rerun = run_ablate(
        "run", str(study), "--results", str(tmp_path / "results")
    )  # and a rerun finishes the study, logging no eval twice
    assert rerun.returncode == 0, rerun.stderr
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "attributes.status = 'FINISHED'")
    trials = [r for r in runs if "ablate.role" not in r.data.tags]
    assert len({(r.data.tags["ablate.variant"], r.data.tags["ablate.seed"]) for r in trials}) == len(trials) == 4
    for r in trials:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        assert len(steps) == len(set(steps)) and max(steps) == 250


def test_stopped_just_after_taking_a_claim_the_unit_is_handed_back(tmp_path, capsys, monkeypatch):
    """Ctrl-C can land between the claim's write and the moment the scheduler holds it."""
    from ablate.run import claims

    taken = claims.WorkList.claim

    def claim_then_stop(self, unit):
        claim = taken(self, unit)
        if unit.startswith("final/"):
            raise KeyboardInterrupt
        return claim

    monkeypatch.setattr(claims.WorkList, "claim", claim_then_stop)
    results = tmp_path / "results"
    assert main(["run", str(write_study(tmp_path, TINY_STUDY)), "--results", str(results)]) == 130
    capsys.readouterr()
    rows = sqlite3.connect(results / "optuna.db").execute("select unit, state, attempts, worker from ablate_claims")
    finals = [row[1:] for row in rows.fetchall() if row[0].startswith("final/")]
    assert sorted(finals) == [("open", 0, None)] * 3 + [("open", 1, None)]  # the one taken, given back


def test_plan_json_gives_the_model_dicts_build_model_takes(tmp_path, capsys):
    assert main(["plan", str(write_study(tmp_path, TINY_STUDY)), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["study"] == "tiny" and len(plan["trials"]) == 4
    for trial in plan["trials"]:
        assert set(trial) == {
            "variant",
            "seed",
            "model",
            "n_params",
            "n_params_non_embedding",
            "flops_per_token",
            "state_size",
            "search",
            "scaled",
            "size",
        }
        model = ablate.build_model(trial["model"])
        assert trial["n_params"] == sum(p.numel() for p in model.parameters())
    assert not (tmp_path / "results").exists()


def test_smoke_form_trains_one_seed_for_20_steps_into_its_own_experiment(tmp_path, capsys):
    study = write_study(
        tmp_path, TINY_STUDY.replace("steps: 30", "steps: 300").replace("eval_every: 15", "eval_every: 100")
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(study), "--smoke", "--results", str(tmp_path / "results"), "--tracking-uri", uri]) == 0
    capsys.readouterr()
    runs = trial_runs(uri, "tiny-smoke")
    assert sorted(runs["tags.ablate.variant"]) == ["aft", "mha"] and set(runs["tags.ablate.seed"]) == {"0"}
    assert set(runs["params.train.steps"]) == {"20"} and set(runs["status"]) == {"FINISHED"}
    assert mlflow.MlflowClient(uri).get_experiment_by_name("tiny") is None  # the real study's stays untouched


def test_variants_lists_every_mixer_with_a_description(capsys):
    assert main(["variants", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ablate.variants()
    assert {"mha", "aft-simple"} <= set(ablate.variants())
    assert all(r["description"] for r in rows)
    shipped = [r for r in rows if registry.mixer_class(r["name"]).__module__.startswith("ablate.architectures.")]
    assert len(shipped) >= 15 and all(r["cannot_decode"] is None for r in shipped)  # each decodes from a state


def test_ui_prints_the_studys_url_once_its_one_worker_server_answers(finished):
    _, results, _ = finished
    ui = subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "ui", "--results", str(results)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )
    try:
        line = ui.stdout.readline()
        # the study's runs table, in model-training mode (MLflow 3 opens GenAI mode otherwise)
        pattern = (
            r"MLflow UI: (http://127\.0\.0\.1:\d+)/#/experiments/(\d+)/runs"
            r"\?viewStateShareKey=ablate-trials&workflowType=machine_learning$"
        )
        base, experiment = re.match(pattern, line.strip()).groups()
        # printed only once the server answers: the first request succeeds, no retries
        body = urllib.request.urlopen(f"{base}/ajax-api/2.0/mlflow/experiments/get?experiment_id={experiment}")
        experiment = json.load(body)["experiment"]
        assert experiment["name"] == "tiny"  # the study that ran last
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
        (server,) = [pid for pid, line in _processes() if "mlflow server" in line and str(results) in line]
        session = _session(server)
        group = [line for pid, line in _processes() if _session(pid) == session]
        assert len(group) <= 2 and not [line for line in group if "huey" in line]  # one worker, no job consumers
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    # the server and its worker go with it: nothing of this store keeps running
    assert not _processes_mentioning(str(results))
    with pytest.raises(OSError):
        urllib.request.urlopen(base, timeout=5)


def test_ui_on_an_unknown_study_is_one_line(finished, capsys, own_store):
    _, results, _ = finished
    assert main(["ui", "--results", str(results), "--study", "nosuch"]) == 2
    assert capsys.readouterr().err == f"ablate: error: no study named 'nosuch' in sqlite:///{results / 'mlflow.db'}\n"


def _processes() -> list[tuple[int, str]]:
    """(pid, command line) of every live process (read from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (cmdline.parent / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if status != "Z":
            found.append((int(cmdline.parent.name), line))
    return found


def _session(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().split(")")[-1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def _processes_mentioning(text: str) -> list[str]:
    return [line for _, line in _processes() if text in line]


def test_sample_generates_the_requested_tokens_from_a_finished_run(finished, capsys):
    _, results, _ = finished
    uri = f"sqlite:///{results / 'mlflow.db'}"
    store = ["--results", str(results), "--tracking-uri", uri]
    client = mlflow.MlflowClient(uri)  # this store, whatever another test set as the current one
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    run_id = next(r.info.run_id for r in runs if "ablate.role" not in r.data.tags)
    parent = next(r.info.run_id for r in runs if "ablate.role" in r.data.tags)

    def sample(*args):
        assert main(["sample", run_id, "--prompt", "def ", "--json", *store, *args]) == 0
        return json.loads(capsys.readouterr().out)

    out = sample("--tokens", "12")
    assert len(out["generated_ids"]) == 12 and out["prompt_ids"] and isinstance(out["text"], str)
    assert sample("--tokens", "12") == out  # the seed fixes the draw
    greedy = sample("--tokens", "5", "--temperature", "0")
    assert greedy == sample("--tokens", "5", "--temperature", "0", "--seed", "7")
    assert greedy == sample("--tokens", "5", "--temperature", "0", "--recompute")  # the state gives the forward's
    assert all(0 <= i < 512 for i in out["generated_ids"] + greedy["generated_ids"])
    assert main(["sample", "no-such-run", *store]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err
    assert main(["sample", parent, *store]) == 2
    assert "has no saved model" in capsys.readouterr().err


CONTROL_STUDY = """\
name: tiny-controls
data: {source: stdlib, vocab_size: 512, max_bytes: 300000}
model: {context: 32, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn_dim: 64}
train: {steps: 30, batch_size: 8, warmup: 5, eval_every: 15, eval_batches: 2, log_every: 5}
variants:
  - {name: mha, model: {mixer: mha}}
  - {name: mha-twin, model: {mixer: mha}}
seeds: [0, 1]
contrasts: [[mha-twin, mha]]
expect:
  - {variant: mha-twin, metric: val_loss, verdict: VERDICT}
"""


def test_compare_check_passes_a_held_expectation_and_fails_a_false_one(tmp_path, capsys):
    """An A/A twin trains to the same losses: `same` holds (exit 0), `worse` does not (exit 1).
    The second run only rewrites the expectation: its trials are already finished."""
    store = [
        "--results",
        str(tmp_path / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}",
    ]
    check = ["compare", "--study", "tiny-controls", "--check", "--no-report", *store]
    for verdict, code in (("same", 0), ("worse", 1)):
        study = write_study(tmp_path, CONTROL_STUDY.replace("VERDICT", verdict))
        assert main(["run", str(study), *store]) == 0
        capsys.readouterr()
        assert main(check) == code
        out = capsys.readouterr().out
        assert "expectations" in out and "contrasts" in out and ("NO" in out) == (code == 1)
    assert main(["compare", "--study", "tiny-controls", "--part", "expectations", "--format", "json", *store]) == 0
    page = (tmp_path / "results" / "tiny-controls" / "report.html").read_text()
    assert page.index('alt="val_loss_contrasts"') < page.index("<h2>Contrasts") < page.index("<h2>Every variant")
    assert page.index("<h2>Every variant") < page.index("<h2>Expectations")
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["variant"], row["against"], row["expected"], row["held"]) == ("mha-twin", "mha", "worse", False)
    assert row["verdict"] == "no significant difference" and row["p"] == 1.0


def test_check_without_expectations_is_an_error(finished, capsys):
    _, results, _ = finished
    store = ["--results", str(results), "--tracking-uri", f"sqlite:///{results / 'mlflow.db'}"]
    assert main(["compare", "--study", "tiny", "--check", "--no-report", *store]) == 2
    assert "declares no expectations" in capsys.readouterr().err


def test_shakespeare_char_runs_on_a_text_given_by_path(tmp_path, capsys):
    """The shipped study, in its smoke form, on a small text of the test's own: characters as
    tokens, the tail as val, and `sample` decodes characters."""
    text = tmp_path / "play.txt"
    text.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nAy me!\n" * 300)
    store = [
        "--results",
        str(tmp_path / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}",
    ]
    study = Path(__file__).resolve().parents[1] / "studies" / "shakespeare_char.yaml"
    assert main(["run", str(study), "--smoke", "--data", str(text), *store]) == 0
    (run,) = [r for _, r in trial_runs(store_of(tmp_path / "results"), "shakespeare_char-smoke").iterrows()]
    assert run["params.data.tokenizer"] == "char" and run["params.data.split"] == "tail"
    assert int(run["params.model.vocab_size"]) == len(set(text.read_text()))
    capsys.readouterr()
    assert main(["sample", run["run_id"], "--prompt", "ROMEO:", "--tokens", "12", "--json", *store]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["generated_ids"]) == 12 and set(out["text"]) <= set(text.read_text())


def test_eval_of_a_finished_trial_reproduces_its_val_loss_and_audits_it(finished, capsys):
    """Without --data, eval takes the run's own study's data: at the study's eval batches, the
    run's final val_loss again, and a causal verdict (no prefix loss)."""
    _, results, _ = finished
    uri = f"sqlite:///{results / 'mlflow.db'}"
    store = ["--results", str(results), "--tracking-uri", uri]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    trial = next(r for r in runs if "ablate.role" not in r.data.tags and r.data.tags["ablate.variant"] == "mha")
    assert main(["eval", trial.info.run_id, "--batch-size", "8", "--batches", "2", "--json", *store]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["val_loss"] == pytest.approx(trial.data.metrics["val_loss"], abs=1e-5)
    assert out["max_leak"] < 1e-5 and "prefix_val_loss" not in out
    evaluation = client.get_run(out["evaluation_run_id"])
    assert evaluation.data.tags["mlflow.parentRunId"] == trial.info.run_id
    assert evaluation.data.tags["ablate.role"] == "evaluation" and evaluation.data.tags["ablate.causal"] == "true"
    assert evaluation.data.metrics["val_loss"] == out["val_loss"]
    assert main(["eval", "no-such-run", *store]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "said"),
    [(b"", "is empty"), (b"\x01\x00\x02", "holds 3 bytes, not a whole number of uint16 tokens")],
    ids=["empty", "odd size"],
)
def test_a_broken_token_file_is_one_line_for_run_and_eval(content, said, finished, tmp_path, capsys):
    _, results, _ = finished
    tokens = tmp_path / "tokens.bin"
    tokens.write_bytes(content)
    uri = f"sqlite:///{results / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    trial = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`ablate.phase` = 'final'")[
        0
    ]
    evals = len(client.search_runs([trial.info.experiment_id]))
    assert (
        main(["eval", trial.info.run_id, "--data", str(tokens), "--results", str(results), "--tracking-uri", uri]) == 2
    )
    fresh = tmp_path / "results"
    assert main(["run", str(write_study(tmp_path, TINY_STUDY)), "--data", str(tokens), "--results", str(fresh)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(said in line for line in err)
    assert len(client.search_runs([trial.info.experiment_id])) == evals and not (fresh / "mlflow.db").exists()


def test_eval_without_data_finds_a_relative_data_source_from_anywhere(tmp_path, capsys, monkeypatch):
    """A study's relative data.source starts from the study's folder, for eval as for run."""
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "text.txt").write_text("To be, or not to be, that is the question. " * 3000)
    one = TINY_STUDY.replace("source: stdlib", "source: text.txt").replace("seeds: [0, 1]", "seeds: [0]")
    study = write_study(folder, one.replace("  - {name: aft, model: {mixer: aft-simple, ffn: false}}\n", ""))
    results = tmp_path / "results"
    uri = f"sqlite:///{results / 'mlflow.db'}"
    assert main(["run", str(study), "--results", str(results), "--tracking-uri", uri]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    client = mlflow.MlflowClient(uri)
    trial = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`ablate.phase` = 'final'")[
        0
    ]
    capsys.readouterr()
    assert (
        main(["eval", trial.info.run_id, "--batches", "2", "--json", "--results", str(results), "--tracking-uri", uri])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["val_loss"] > 0


def _subcommands():
    import argparse

    from ablate.cli import parser as _parser

    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, sub.choices


def test_every_option_of_every_command_says_what_it_does_and_its_default():
    parser, commands = _subcommands()
    for name, command in {"ablate": parser, **commands}.items():
        for action in command._actions:
            if action.dest in ("help", "command", "version"):
                continue
            what = f"ablate {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{what} has no help text"
            if action.default not in (None, False, []):
                assert "default" in action.help, f"{what}: its default ({action.default!r}) is not shown"


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"ablate {ablate.__version__}\n"


def test_compare_help_explains_the_terms_of_its_table(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    for term in ("Holm", "d_z", "Hedges' g", "MDE", "paired", "not converged"):
        assert f"\n  {term} " in out


def test_a_budgeted_study_labels_what_its_budget_held_equal(tmp_path, capsys, own_store):
    text = TINY_STUDY.replace("seeds: [0, 1]", "seeds: [0]\nbudget: {params: 8000, tolerance: 0.05}")
    study, results = write_study(tmp_path, text), tmp_path / "results"
    assert main(["run", str(study), "--results", str(results)]) == 0
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    trials = [r for r in runs if "ablate.role" not in r.data.tags]
    assert {r.data.params["budget"] for r in trials} == {"8,000 non-embedding parameters"}
    capsys.readouterr()
    assert main(["compare", "--results", str(results), "--no-report", "--wide"]) == 0
    out = capsys.readouterr().out
    assert "params non-emb (budget)" in out and "FLOPs/tok" in out
    counted = {int(r.data.params["n_params_non_embedding"]) for r in trials}
    assert all(abs(n - 8000) <= 400 for n in counted) and all(f"{n:,}" in out for n in counted)

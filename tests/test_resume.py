"""Nothing lost: a killed study resumes inside its trial and ends as if never stopped; a diverging
trial fails alone; several workers share one study and train every trial exactly once."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from ablate.cli import main
from ablate.core.config import TrainConfig
from ablate.model import build_model
from ablate.train.trainer import Trainer, seed_everything
from tests.conftest import TINY_STUDY, clean_env, run_ablate, write_study

pytestmark = pytest.mark.slow  # studies interrupted by signals and resumed

TRAIN = {"steps": 40, "batch_size": 4, "warmup": 4, "eval_every": 10, "eval_batches": 2, "log_every": 3}
MODEL = {"mixer": "mha", "vocab_size": 512, "context": 32, "d_model": 32, "n_layers": 1, "n_heads": 2, "qkv_dim": 32}


def trainer(corpus, **train) -> Trainer:
    seed_everything(3)
    return Trainer(build_model(MODEL), corpus, TrainConfig(**TRAIN, **train), seed=3)


@pytest.mark.parametrize(
    "train",
    [{}, {"optimizer": "muon", "schedule": "wsd", "cooldown_frac": 0.5}],
    ids=["adamw-cosine", "muon-wsd"],
)
def test_a_trainer_resumed_from_a_checkpoint_ends_where_an_uninterrupted_one_does(corpus, tmp_path, train):
    """The checkpoint holds every optimizer's state (Muon's momentum, AdamW's moments) and the
    schedule's place: stopped mid-cooldown or not, the resumed run ends with the same weights."""
    uninterrupted = trainer(corpus, **train)
    whole = uninterrupted.fit()

    first = trainer(corpus, **train)
    first.cfg = first.cfg.model_copy(update={"steps": 20})  # stop after the second eval, as a crash would
    first.fit(checkpoint=tmp_path / "run.pt")
    random.random(), torch.rand(3)  # whatever ran in between must not matter
    resumed = trainer(corpus, **train)
    resumed.load(tmp_path / "run.pt")
    assert resumed.step == 20
    assert [len(o.state) for o in resumed.optimizers] == [len(o.state) for o in first.optimizers]
    end = resumed.fit()
    assert abs(end["val_loss"] - whole["val_loss"]) < 1e-6 and abs(end["train_loss"] - whole["train_loss"]) < 1e-6
    for a, b in zip(resumed.model.parameters(), uninterrupted.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_a_checkpoint_is_replaced_atomically(corpus, tmp_path):
    t = trainer(corpus)
    t.save(tmp_path / "run.pt")
    t.save(tmp_path / "run.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temp file left behind


KILL_STUDY = (
    TINY_STUDY.replace("steps: 30", "steps: 200")
    .replace("eval_every: 15", "eval_every: 20")
    .replace("  - {name: aft, model: {mixer: aft-simple, ffn: false}}\n", "")
)


def store(results):
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], run_view_type=mlflow.entities.ViewType.ACTIVE_ONLY)
    return client, [r for r in runs if "ablate.role" not in r.data.tags]


def checkpoint_step(folder) -> int:
    for path in folder.glob("*.pt") if folder.exists() else ():
        try:
            return torch.load(path, weights_only=False)["step"]
        except (OSError, RuntimeError, EOFError):
            continue  # being replaced right now
    return 0


@pytest.mark.parametrize("damaged", [False, True], ids=["checkpoint-intact", "checkpoint-truncated"])
def test_kill_9_mid_trial_then_rerun_resumes_the_same_run_to_the_same_loss(tmp_path, damaged):
    """Killed mid-trial, a rerun continues the same run from its checkpoint. If that checkpoint
    was damaged (truncated here), the rerun says so in one line, sets the file aside, ends the
    old run FAILED and trains the trial again from step 0 in a new run: the study still
    finishes, with the same losses, and no curve holds a step twice."""
    study = write_study(tmp_path, KILL_STUDY)
    results = tmp_path / "results"
    kill_after = 20 * random.randint(1, 4)  # a random eval step after the first, well before the last
    proc = subprocess.Popen(
        ["ablate", "run", str(study), "--results", str(results)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while checkpoint_step(results / "checkpoints") < kill_after and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _, runs = store(results)
    assert [r.info.status for r in runs] == ["RUNNING"]  # what kill -9 leaves
    if damaged:
        (saved,) = (results / "checkpoints").glob("*.pt")
        saved.write_bytes(saved.read_bytes()[:1000])

    rerun = run_ablate("run", str(study), "--results", str(results))
    assert rerun.returncode == 0, rerun.stderr
    client, runs = store(results)
    if damaged:
        (line,) = [line for line in rerun.stdout.splitlines() if "unreadable" in line]
        assert "set aside as" in line and "from step 0 in a new run" in line
        assert len(list((results / "checkpoints").glob("*.pt.damaged-*"))) == 1  # kept, not deleted
        (old,) = [r for r in runs if r.info.status == "FAILED"]
        assert "unreadable" in old.data.tags["ablate.failure"]
        (again,) = [r for r in runs if "ablate.restarted_from_step_0" in r.data.tags]
        assert old.info.run_id in again.data.tags["ablate.restarted_from_step_0"]
        runs = [r for r in runs if r.info.status != "FAILED"]
        continued = again
    else:
        assert "resuming run" in rerun.stdout
        (continued,) = [r for r in runs if "ablate.resumed_from_step" in r.data.tags]
        assert int(continued.data.tags["ablate.resumed_from_step"]) >= kill_after
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    steps = [m.step for m in client.get_metric_history(continued.info.run_id, "val_loss")]
    assert steps == list(range(0, 201, 20))  # one unbroken curve from the untrained model: every eval once
    assert not list((results / "checkpoints").glob("*.pt"))  # removed once their runs finished

    clean = tmp_path / "uninterrupted"
    assert (
        subprocess.run(["ablate", "run", str(study), "--results", str(clean)], check=False, env=clean_env()).returncode
        == 0
    )
    _, reference = store(clean)
    loss = {r.data.tags["ablate.seed"]: r.data.metrics["val_loss"] for r in reference}
    for r in runs:
        assert abs(r.data.metrics["val_loss"] - loss[r.data.tags["ablate.seed"]]) < 1e-6


DIVERGING = TINY_STUDY.replace(
    "  - {name: aft, model: {mixer: aft-simple, ffn: false}}",
    """\
  - {name: hot, model: {mixer: mha}, train: {lr: 1.0e+6}}
  - name: searched
    model: {mixer: mha}
    search: {space: {lr: {choice: [2.0e-3, 1.0e+6]}}, trials: 2, search_steps: 15, sampler: grid, pruner: none}""",
).replace("seeds: [0, 1]", "seeds: [0]")


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path, capsys):
    import optuna

    study = write_study(tmp_path, DIVERGING)
    results = tmp_path / "results"
    uri = f"sqlite:///{results / 'mlflow.db'}"
    assert main(["run", str(study), "--results", str(results), "--tracking-uri", uri]) == 0
    _, runs = store(results)
    by_name = {r.info.run_name: r for r in runs}
    hot = by_name["hot-seed0"]
    assert hot.info.status == "FAILED" and "train loss" in hot.data.tags["ablate.failure"]
    assert int(hot.data.tags["ablate.failed_step"]) > 0
    assert by_name["mha-seed0"].info.status == "FINISHED" and by_name["searched-seed0"].info.status == "FINISHED"

    trials = optuna.load_study(study_name="tiny/searched", storage=f"sqlite:///{results / 'optuna.db'}").trials
    states = {t.params["lr"]: t.state.name for t in trials}
    assert states == {2e-3: "COMPLETE", 1e6: "FAIL"}
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert "train loss" in failed.user_attrs["ablate.failure"]
    assert float(by_name["searched-seed0"].data.params["train.lr"]) == 2e-3

    capsys.readouterr()
    assert main(["compare", "--results", str(results), "--tracking-uri", uri, "--format", "json"]) == 0
    captured = capsys.readouterr()
    rows = {r["variant"]: r for r in __import__("json").loads(captured.out)}
    assert rows["hot"]["failed"] == 1 and rows["hot"]["n"] == 0 and rows["hot"]["verdict"] == "every run failed"
    assert rows["mha"]["failed"] == 0 and "failed runs (diverged or out of memory): hot 1" in captured.err


def test_compare_of_a_study_whose_every_run_failed_says_so_with_a_reason(tmp_path, capsys):
    study = write_study(tmp_path, TINY_STUDY.replace("log_every: 5", "log_every: 5, max_loss: 0.5"))
    results = tmp_path / "results"
    uri = f"sqlite:///{results / 'mlflow.db'}"
    assert main(["run", str(study), "--results", str(results), "--tracking-uri", uri]) == 0
    capsys.readouterr()
    assert main(["compare", "--results", str(results), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "every run failed (aft 2 seed(s), mha 2 seed(s)); the first reason: train loss" in err
    assert err.count("\n") == 1


WORKERS_STUDY = (  # units long enough that a worker still importing torch finds work left (2 cores)
    TINY_STUDY.replace("steps: 30", "steps: 60")
    .replace("seeds: [0, 1]", "seeds: [0, 1, 2]")
    .replace(
        "  - {name: aft, model: {mixer: aft-simple, ffn: false}}",
        """\
  - {name: aft, model: {mixer: aft-simple, ffn: false}}
  - name: searched
    model: {mixer: mha}
    search: {space: {lr: {choice: [1.0e-3, 2.0e-3, 4.0e-3]}}, trials: 3, search_steps: 10, sampler: grid}""",
    )
)


def two_workers(tmp_path, storage: str | None, tracking_uri: str | None):
    """Run the study with --workers 2; return its trial runs and Optuna trials."""
    import optuna

    study = write_study(tmp_path, WORKERS_STUDY)
    results = tmp_path / "results"
    args = ["ablate", "run", str(study), "--results", str(results), "--workers", "2"]
    args += ["--storage", storage] * bool(storage) + ["--tracking-uri", tracking_uri] * bool(tracking_uri)
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=clean_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("workers: started 2") == 1
    ran = [int(n) for n in re.findall(r"worker \d+: ran (\d+) units", proc.stdout)]
    assert len(ran) == 2 and min(ran) > 0  # both worked: neither waited on a store the other was setting up
    client = mlflow.MlflowClient(tracking_uri or f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "ablate.role" not in r.data.tags]
    optuna_trials = optuna.load_study(
        study_name="tiny/searched", storage=storage or f"sqlite:///{results / 'optuna.db'}"
    ).trials
    return proc, runs, optuna_trials


def assert_each_trial_once(proc, runs, optuna_trials):
    final = [r for r in runs if r.data.tags["ablate.phase"] == "final"]
    pairs = sorted((r.data.tags["ablate.variant"], r.data.tags["ablate.seed"]) for r in final)
    assert pairs == sorted((v, s) for v in ("mha", "aft", "searched") for s in "012")  # each once, none lost
    assert {r.info.status for r in runs} == {"FINISHED"}
    # the grid's 3 points, each once, though 2 workers asked at once
    assert sorted(t.params["lr"] for t in optuna_trials) == [1e-3, 2e-3, 4e-3]
    assert len([r for r in runs if r.data.tags["ablate.phase"] == "search"]) == 3
    pids = {line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("worker ")}
    assert len(pids) == 2


def test_two_workers_on_sqlite_train_each_trial_once(tmp_path):
    assert_each_trial_once(*two_workers(tmp_path, None, None))


def test_workers_flag_rejects_zero(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", str(write_study(tmp_path, TINY_STUDY)), "--workers", "0"])
    assert e.value.code == 2 and "must be a positive integer" in capsys.readouterr().err


def test_a_claim_whose_heartbeat_went_stale_is_taken_over_once(tmp_path):
    from ablate.run import claims

    url = f"sqlite:///{tmp_path / 'work.db'}"
    gone = claims.WorkList(url, "s")
    gone.worker = "other-machine:1"  # not this host: only its heartbeat can tell that it is gone
    held = gone.claim("u")
    gone.note(held, run_id="r1")
    patient = claims.WorkList(url, "s", stale_after=3600)
    assert patient.claim("u") is None  # it beat a moment ago
    with gone.engine.begin() as c:  # its last beat, two minutes ago
        c.execute(claims.TABLE.update().values(heartbeat=time.time() - 120))
    eager = claims.WorkList(url, "s", stale_after=60)
    taken = eager.claim("u")
    assert taken is not None and taken.run_id == "r1" and taken.attempts == 2  # resumes the same run
    assert eager.claim("u") is None and not gone.beat(held)  # the old holder learns it lost the claim
    eager.end(taken, claims.DONE)
    assert patient.claim("u") is None and patient.rows()["u"].state == claims.DONE


ONE_TRIAL = TINY_STUDY.replace("seeds: [0, 1]", "seeds: [0]").replace(
    "  - {name: aft, model: {mixer: aft-simple, ffn: false}}\n", ""
)


def test_checkpoints_nothing_can_resume_are_removed_when_a_study_starts(tmp_path, capsys, own_store):
    """A checkpoint whose run the store no longer has (the store was deleted mid-run), and the
    temporary file of a save cut off by a dead process, are removed; a live save is not."""
    import socket

    study, results = write_study(tmp_path, ONE_TRIAL), tmp_path / "results"
    folder = results / "checkpoints"
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    stray = folder / "0123456789abcdef0123456789abcdef.pt"
    cut = folder / f".{stray.name}.{host}:{dead.pid}.tmp"
    live = folder / f".{stray.name}.{host}:{os.getpid()}.tmp"
    for path in (stray, cut, live):
        path.write_bytes(b"\0" * 10)
    assert main(["run", str(study), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert not stray.exists() and not cut.exists() and live.exists()
    assert f"removed {stray}: nothing can resume it" in out and f"removed {cut}" in out
    (results / "mlflow.db").unlink()  # the MLflow store deleted; the study database stays
    stray.write_bytes(b"\0" * 10)
    command = ["ablate", "run", str(study), "--results", str(results)]  # in a new process: this one's
    rerun = subprocess.run(command, check=False, capture_output=True, text=True, env=clean_env())  # client holds it
    assert rerun.returncode == 2 and rerun.stderr.count("\n") == 1
    assert "lists runs that the MLflow store" in rerun.stderr and "no longer belong together" in rerun.stderr
    (results / "optuna.db").unlink()  # both deleted, as the error says: the study starts afresh
    rerun = subprocess.run(command, check=False, capture_output=True, text=True, env=clean_env())
    assert rerun.returncode == 0, rerun.stderr
    assert not stray.exists() and f"removed {stray}" in rerun.stdout


def test_a_study_that_stops_on_an_error_ends_its_parent_runs_failed_with_the_reason(tmp_path, monkeypatch, own_store):
    from ablate.run import schedule

    def broken(*args, **kwargs):
        raise RuntimeError("the worker broke\nsecond line")

    monkeypatch.setattr(schedule, "work", broken)
    study, results = write_study(tmp_path, ONE_TRIAL), tmp_path / "results"
    with pytest.raises(RuntimeError, match="the worker broke"):
        main(["run", str(study), "--results", str(results)])
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    parents = [r for r in client.search_runs([exp.experiment_id]) if "ablate.role" in r.data.tags]
    assert {p.data.tags["ablate.role"] for p in parents} == {"study", "variant"}
    assert {(p.info.status, p.data.tags["ablate.failure"]) for p in parents} == {("FAILED", "the worker broke")}


def test_a_full_disk_while_a_checkpoint_is_written_ends_the_study_in_one_line_and_a_rerun_finishes(
    tmp_path, capsys, monkeypatch, own_store
):
    """torch reports a full disk only as "unexpected pos" (as seen on a 2 MB tmpfs); the disk's
    free space says what happened."""
    import shutil

    from ablate.train import checkpoint

    def full(state, path):
        Path(path).write_bytes(b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    study, results = write_study(tmp_path, ONE_TRIAL), tmp_path / "results"
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.torch, "save", full)
        patch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
        assert main(["run", str(study), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablate: error: No space left on device: ") and err.count("\n") == 1
    client, runs = store(results)
    parents = [r for r in client.search_runs([runs[0].info.experiment_id]) if "ablate.role" in r.data.tags]
    assert {(r.info.status, r.data.tags["ablate.failure"][:24]) for r in parents} == {
        ("FAILED", "No space left on device:")
    }
    assert [r.info.status for r in runs] == ["FAILED"]  # not the trial's fault: a rerun resumes it
    assert main(["run", str(study), "--results", str(results)]) == 0  # space again: the trial is trained
    _, runs = store(results)
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_the_eta_comes_from_measured_trial_times_per_family():
    from ablate.run.progress import Pace, clock

    pace = Pace()
    assert pace.eta("mha", 100, None, [("aft", 10)]) is None  # nothing measured, nothing run yet: no guess
    assert pace.eta("mha", 100, 0.5, [("aft", 10)]) == 100 * 0.5 + 10 * 0.5  # this trial's rate so far
    pace.record("mha", 30.0, 300)  # 0.1 s a step
    pace.record("aft-simple", 6.0, 300)  # 0.02 s a step
    assert pace.per_step("mha") == pytest.approx(0.1)
    assert pace.per_step("retention") == pytest.approx(36 / 600)  # unmeasured: the pooled pace
    # this mha trial's first steps look slow (0.9 s a step); the measured pace counts, not they
    left = pace.eta("mha", 100, 0.9, [("aft-simple", 1000), ("retention", 500)])
    assert left == pytest.approx(100 * 0.1 + 1000 * 0.02 + 500 * 0.06)
    assert clock(left) == "0:01:00" and clock(None) == "-"


def test_a_stop_between_an_evals_metrics_and_its_checkpoint_logs_no_eval_twice(tmp_path, capsys, own_store):
    """Each eval's metrics reach MLflow before its checkpoint is written. Stopped between the two
    (Ctrl-C here), the rerun resumes from the checkpoint before and trains that eval again: it is
    not logged a second time, and the run ends at the uninterrupted loss."""
    from ablate.train.trainer import Trainer

    text = ONE_TRIAL.replace("steps: 30", "steps: 60")
    study, results = write_study(tmp_path, text), tmp_path / "results"
    save, calls = Trainer.save, []

    def interrupted(trainer, path, state=None):
        calls.append(trainer.step)
        if len(calls) == 2:  # the eval at step 30 is in MLflow; its checkpoint is not written
            raise KeyboardInterrupt
        save(trainer, path, state)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "save", interrupted)
        assert main(["run", str(study), "--results", str(results)]) == 130
    assert calls == [15, 30]
    assert main(["run", str(study), "--results", str(results)]) == 0
    assert "resuming run" in capsys.readouterr().out
    client, (run,) = store(results)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == [0, 15, 30, 45, 60]
    clean = tmp_path / "uninterrupted"
    assert main(["run", str(study), "--results", str(clean)]) == 0
    _, (reference,) = store(clean)
    assert run.data.metrics["val_loss"] == pytest.approx(reference.data.metrics["val_loss"], abs=1e-6)


def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_one_whole(corpus, tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    first = trainer(corpus)
    first.fit(checkpoint=None)
    first.save(path)
    saved = path.read_bytes()

    def midway(state, file):
        Path(file).write_bytes(saved[: len(saved) // 2])
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", midway)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        first.save(path)
    assert path.read_bytes() == saved and [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temp left
    monkeypatch.undo()
    again = trainer(corpus)
    again.load(path)
    assert again.step == first.step == TRAIN["steps"]


def test_sigterm_lets_the_step_finish_saves_a_checkpoint_and_the_resumed_run_ends_as_one_uninterrupted(
    corpus, tmp_path
):
    """What SLURM sends before a time limit or a preemption: the step in flight ends, the
    trainer keeps it in a checkpoint, then stops; resumed, it ends where an uninterrupted run does."""
    from ablate.core.errors import Terminated

    whole = trainer(corpus).fit()
    stopped = trainer(corpus)

    def terminate_at_step_18(step, metrics, kind):  # mid-iteration: its log is out, its eval is not
        if step == 18:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Terminated):
        stopped.fit(terminate_at_step_18, checkpoint=tmp_path / "run.pt")
    resumed = trainer(corpus)
    resumed.load(tmp_path / "run.pt")
    assert resumed.step == 18  # saved after its last whole step, not at the last eval's (10)
    end = resumed.fit()
    assert abs(end["val_loss"] - whole["val_loss"]) < 1e-6 and abs(end["train_loss"] - whole["train_loss"]) < 1e-6


class _Planted:
    """A pickle that runs a command when loaded with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _damage(kind: str, saved: Path, marker: Path) -> None:
    """Replace a trainer's checkpoint the way a hostile or careless hand might."""
    import pickle

    state = torch.load(saved, weights_only=False)  # the test's own file
    if kind == "planted-code":
        saved.write_bytes(pickle.dumps({"step": 15, "payload": _Planted(marker)}))
    elif kind == "no-model":
        torch.save({k: v for k, v in state.items() if k != "model"}, saved)
    elif kind == "unknown-module":
        saved.write_bytes(pickle.dumps({"step": 15, "model": _Planted(marker)}).replace(b"posix", b"nomod"))
    elif kind == "another-model":
        state["model"] = {k: torch.zeros(3) for k in state["model"]}
        torch.save(state, saved)


@pytest.mark.parametrize("kind", ["planted-code", "no-model", "unknown-module", "another-model"])
def test_a_checkpoint_that_is_not_the_trials_is_set_aside_and_the_trial_trained_again(
    tmp_path, capsys, own_store, kind
):
    """Resuming reads checkpoints as tensors and plain data only: a planted pickle runs nothing.
    A checkpoint that loads but is not this trial's (no model, an unknown module, another
    model's weights) is set aside as damaged, and the trial trains again to the uninterrupted loss."""
    from ablate.train.trainer import Trainer

    study, results, marker = write_study(tmp_path, ONE_TRIAL), tmp_path / "results", tmp_path / "ran"
    save = Trainer.save

    def interrupted(trainer, path, state=None):
        save(trainer, path, state)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "save", interrupted)
        assert main(["run", str(study), "--results", str(results)]) == 130
    (saved,) = (results / "checkpoints").glob("*.pt")
    _damage(kind, saved, marker)
    capsys.readouterr()
    assert main(["run", str(study), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert not marker.exists()
    (line,) = [line for line in out.splitlines() if "unreadable" in line]
    assert "set aside as" in line and "Traceback" not in out
    assert len(list((results / "checkpoints").glob("*.pt.damaged-*"))) == 1
    clean = tmp_path / "uninterrupted"
    assert main(["run", str(study), "--results", str(clean)]) == 0
    _, runs = store(results)
    (finished,) = [r for r in runs if r.info.status == "FINISHED"]
    _, (reference,) = store(clean)
    assert finished.data.metrics["val_loss"] == pytest.approx(reference.data.metrics["val_loss"], abs=1e-6)


def test_a_run_opened_by_a_worker_killed_before_its_claim_named_it_is_not_left_running(tmp_path, own_store):
    """kill -9 between opening a trial's run and noting it on the claim leaves a RUNNING run that
    no claim names. The rerun trains the trial in a new run and deletes the orphan: the store
    holds one FINISHED run per trial and nothing RUNNING."""
    study, results = write_study(tmp_path, ONE_TRIAL), tmp_path / "results"
    killed = (
        "import os, signal, sys\n"
        "from ablate.tracking.store import Tracker\n"
        "Tracker.log_dataset = lambda *_: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from ablate.cli import main\n"
        f"sys.exit(main(['run', {str(study)!r}, '--results', {str(results)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", killed], check=False, capture_output=True, env=clean_env())
    assert proc.returncode == -signal.SIGKILL
    _, runs = store(results)
    assert [r.info.status for r in runs] == ["RUNNING"]
    assert run_ablate("run", str(study), "--results", str(results)).returncode == 0
    _, runs = store(results)
    assert [r.info.status for r in runs] == ["FINISHED"]

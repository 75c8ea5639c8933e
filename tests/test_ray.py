"""--executor ray against a real Ray: a head on this machine (loopback only) that declares one GPU,
so that fractional placement is exercised without one. Ray's tasks start the workers; the claim
table still decides what runs, so nothing runs twice, and a worker killed mid-trial is retried and
resumes from its checkpoint."""

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import pytest

from ablate.cli.ui import free_port
from ablate.run import claims
from tests.conftest import clean_env, engine_study, planned_keys, run_ablate, write_study

pytestmark = pytest.mark.slow  # a real Ray cluster


def _ray(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ray", *args], check=False, capture_output=True, text=True, env=env, timeout=180)


def _ray_processes() -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", "raylet|gcs_server|ray::"], check=False, capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.fixture
def ray_head():
    """A Ray head of this machine: 2 CPUs and a declared GPU, every port on 127.0.0.1."""
    assert not _ray_processes(), "a Ray is already running on this machine"
    env = clean_env() | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    port, temp = free_port(), Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    started = _ray(
        "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=1", "--include-dashboard=false",
        "--disable-usage-stats", f"--temp-dir={temp}", env=env,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    listening = subprocess.run(["ss", "-ltnp"], check=False, capture_output=True, text=True).stdout
    ray_ports = [line.split()[3] for line in listening.splitlines() if re.search(r"gcs_server|raylet", line)]
    assert ray_ports and all("127.0.0.1" in address for address in ray_ports), ray_ports
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _ray("stop", "--force", env=env)
        for _ in range(50):
            if not _ray_processes():
                break
            time.sleep(0.2)
        assert not _ray_processes(), "Ray left processes behind"


def _run(study: Path, results: Path, address: str, timeout: float = 400) -> subprocess.CompletedProcess:
    args = ["ablate", "run", str(study), "--results", str(results), "--executor", "ray", "--ray-address", address]
    args += ["--workers", "2", "--gpus-per-worker", "0.5", "--cpus-per-worker", "1"]
    return subprocess.run(args, check=False, capture_output=True, text=True, env=clean_env(), timeout=timeout)


def _trial_runs(results: Path):
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("onray")
    return [r for r in client.search_runs([exp.experiment_id]) if "ablate.role" not in r.data.tags]


def test_ray_tasks_share_a_gpu_and_train_each_trial_once(tmp_path, ray_head):
    study = write_study(tmp_path, engine_study("onray", 300))  # long enough that neither worker takes all four
    results = tmp_path / "results"
    proc = _run(study, results, ray_head)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "workers: 2 Ray tasks on 127.0.0.1" in proc.stdout
    runs = _trial_runs(results)
    assert sorted((r.data.tags["ablate.variant"], r.data.tags["ablate.seed"]) for r in runs) == [
        ("aft", "0"), ("aft", "1"), ("mha", "0"), ("mha", "1"),
    ]  # fmt: skip
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.tags["ablate.trial_key"] for r in runs) == sorted(planned_keys(study))
    assert {r.data.tags["ablate.cuda_visible_devices"] for r in runs} == {"0"}  # both halves of GPU 0
    assert len({r.data.tags["ablate.worker"] for r in runs}) == 2  # two workers, each placed by Ray
    rows = claims.WorkList(f"sqlite:///{results / 'optuna.db'}", "onray").rows()
    assert sorted(r.state for u, r in rows.items() if u.startswith("final/")) == ["done"] * 4

    again = _run(study, results, ray_head)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 units left, so 0 of the 2 workers asked for are started" in again.stdout  # no task for nothing
    assert len(_trial_runs(results)) == 4  # nothing trained twice


def test_a_worker_killed_mid_trial_is_retried_and_resumes_from_its_checkpoint(tmp_path, ray_head):
    study = write_study(tmp_path, engine_study("onray", 300, "[0]"))
    results = tmp_path / "results"
    args = ["ablate", "run", str(study), "--results", str(results), "--executor", "ray", "--ray-address", ray_head]
    args += ["--workers", "1", "--gpus-per-worker", "0.5"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
    work = None
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline:
        time.sleep(0.5)
        if work is None and (results / "optuna.db").exists():
            work = claims.WorkList(f"sqlite:///{results / 'optuna.db'}", "onray")
        checkpoints = list((results / "checkpoints").glob("*.pt")) if (results / "checkpoints").exists() else []
        if work is not None and checkpoints:
            running = [r for u, r in work.rows().items() if r.state == claims.RUNNING and u.startswith("final/")]
            if running:
                victim = int(running[0].worker.rpartition(":")[2])
    assert victim is not None, "no trial reached its first checkpoint"
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    runs = _trial_runs(results)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    resumed = [r for r in runs if "ablate.resumed_from_step" in r.data.tags]
    assert len(resumed) == 1 and int(resumed[0].data.tags["ablate.resumed_from_step"]) >= 20
    assert str(victim) not in resumed[0].data.tags["ablate.worker"]  # the retry's worker finished it


def test_without_an_address_a_ray_of_this_machine_is_started_for_the_study_and_stopped_with_it(tmp_path):
    assert not _ray_processes(), "a Ray is already running on this machine"
    token = Path.home() / ".ray" / "auth_token"
    had_token = token.exists()
    study = write_study(tmp_path, engine_study("onray", 300))  # long enough that neither worker takes all four
    results = tmp_path / "results"
    args = ["ablate", "run", str(study), "--results", str(results), "--executor", "ray", "--workers", "2"]
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=clean_env(), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "workers: 2 Ray tasks on a Ray started on this machine" in proc.stdout
    runs = _trial_runs(results)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["ablate.worker"] for r in runs}) == 2
    for _ in range(50):
        if not _ray_processes():
            break
        time.sleep(0.2)
    assert not _ray_processes(), "the study's Ray outlived it"
    assert token.exists() == had_token  # its token was its own, not one left in the home for other clusters


def test_a_trial_on_two_devices_is_one_ray_task_holding_two_cores_for_its_two_ranks(tmp_path):
    """`train.devices: 2`: each worker one task with a core per rank, torchrun starting the ranks in
    it; the trial's one run is logged by rank 0, with one process's loss."""
    text = engine_study("onray", 40, "[0]", ("mha",)).replace("log_every: 5}", "log_every: 5, devices: 2}")
    study, results = write_study(tmp_path, text), tmp_path / "results"
    args = ["ablate", "run", str(study), "--results", str(results), "--executor", "ray"]
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=clean_env(), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "workers: 1 Ray tasks on a Ray started on this machine (2 CPU, 0 GPU each)" in proc.stdout
    (run,) = _trial_runs(results)
    assert run.info.status == "FINISHED" and run.data.params["train.devices"] == "2"
    alone = write_study(tmp_path, text.replace(", devices: 2", ""), "alone.yaml")
    assert run_ablate("run", str(alone), "--results", str(tmp_path / "alone")).returncode == 0
    (single,) = _trial_runs(tmp_path / "alone")
    assert run.data.metrics["val_loss"] == pytest.approx(single.data.metrics["val_loss"], rel=1e-5)


def _training(results: Path) -> int:
    """How many final trials a worker holds with its run open."""
    rows = claims.WorkList(f"sqlite:///{results / 'optuna.db'}", "onray").rows()
    return sum(1 for u, r in rows.items() if u.startswith("final/") and r.state == claims.RUNNING and r.run_id)


def _status(results: Path) -> tuple[list[str], list[str]]:
    """The trial runs' statuses and their claims' states."""
    rows = claims.WorkList(f"sqlite:///{results / 'optuna.db'}", "onray").rows()
    return sorted(r.info.status for r in _trial_runs(results)), sorted(
        r.state for u, r in rows.items() if u.startswith("final/")
    )


@pytest.mark.parametrize("stop, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"])
def test_a_stopped_ray_study_ends_its_runs_killed_and_hands_its_units_back(tmp_path, stop, code):
    """SIGTERM ended with Ray's native dump and exit 1 (or 134); SIGTERM and Ctrl-C (to the whole
    group, as a terminal sends it) left the trial runs and their claims RUNNING, because Ray kills
    its tasks' processes before their workers can let go. Now: ablate's exit code, every trial
    run KILLED, every claim open, no Ray left behind."""
    study = write_study(tmp_path, engine_study("onray", 100_000))
    results = tmp_path / "results"
    args = ["ablate", "run", str(study), "--results", str(results), "--executor", "ray", "--workers", "2"]
    log = tmp_path / "out.log"
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    try:
        deadline = time.time() + 300
        while "Ray tasks" not in log.read_text() or _training(results) < 2:  # the store exists once the tasks do
            assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        time.sleep(3)
        os.killpg(proc.pid, stop) if stop == signal.SIGINT else proc.send_signal(stop)
        assert proc.wait(timeout=120) == code, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            subprocess.run(["ray", "stop", "--force"], check=False, capture_output=True)
    assert "SIGTERM received" not in log.read_text()
    assert _status(results) == (["KILLED", "KILLED"], ["open"] * 4)
    for _ in range(50):
        if not _ray_processes():
            break
        time.sleep(0.2)
    assert not _ray_processes(), "the study's Ray outlived it"


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--cpus-per-worker", "100"], "each worker asks for 100 CPU; the largest node of the Ray cluster has 2"),
        (["--gpus-per-worker", "0.3"], "each worker asks for 0.3 GPU; the largest node of the Ray cluster has 0"),
    ],
    ids=["cpus", "gpus"],
)
def test_a_worker_no_ray_node_can_hold_is_one_line_not_a_wait(tmp_path, flags, said):
    study = write_study(tmp_path, engine_study("onray", 30))
    args = ["ablate", "run", str(study), "--results", str(tmp_path / "results"), "--executor", "ray", *flags]
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=clean_env(), timeout=180)
    assert proc.returncode == 2 and f"ablate: error: {said}\n" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "address, said",
    [
        ("junk", "argument --ray-address: must be HOST:PORT, ray://HOST:PORT or auto, got 'junk'"),
        ("127.0.0.1:1", "--ray-address 127.0.0.1:1: no Ray cluster answers there"),
    ],
)
def test_a_ray_address_that_is_not_one_or_answers_nothing_is_one_line(tmp_path, capsys, address, said):
    from ablate.cli import main

    study = write_study(tmp_path, engine_study("onray", 30))
    results = tmp_path / "results"
    try:
        code = main(["run", str(study), "--results", str(results), "--executor", "ray", "--ray-address", address])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and said in err and err.count("\n") == 1
    assert not (results / "mlflow.db").exists()

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

from ablate.run import claims
from ablate.ui import free_port
from tests.conftest import clean_env, engine_study, planned_keys, write_study


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
    study = write_study(tmp_path, engine_study("onray", 30))
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
    assert "4 of 4 trials already finished" in again.stdout or "ran 0 units" in again.stdout
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
    study = write_study(tmp_path, engine_study("onray", 30))
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

"""--executor slurm on a real one-node SLURM cluster (`.ci/start-slurm`: munged, slurmctld and
slurmd on this host), with the work list and the MLflow store on PostgreSQL, as a cluster's
workers on other hosts need them. Without a SLURM that answers these tests skip, unless
ABLATE_REQUIRE_SLURM=1 (as in CI), where they fail."""

import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

import mlflow
import pytest

from ablate.run import claims
from tests.conftest import clean_env, engine_study, planned_keys, write_study

pytestmark = pytest.mark.slow  # a real SLURM cluster, jobs of a minute

STEPS_PAST_ONE_JOB = 20_000  # a few jobs' worth here; more than the first job's 30 s on a machine twice CI's speed
REQUEUE_SETTLE_S = 5


def _slurm_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(state in out.stdout for state in ("idle", "mixed", "allocated"))


@pytest.fixture
def slurm():
    if not _slurm_up():
        if os.environ.get("ABLATE_REQUIRE_SLURM") == "1":
            pytest.fail("ABLATE_REQUIRE_SLURM=1 but no SLURM answers (sinfo): run .ci/start-slurm")
        pytest.skip("no SLURM cluster (sinfo does not answer): .ci/start-slurm starts one")


def _study(tmp_path, steps: int, seeds: str):
    return write_study(tmp_path, engine_study("onslurm", steps, seeds))


def _run(study, results, storage, uri, *flags, timeout=500):
    args = ["ablate", "run", str(study), "--results", str(results), "--executor", "slurm"]
    args += ["--storage", storage, "--tracking-uri", uri, *flags]
    return subprocess.run(args, check=False, capture_output=True, text=True, env=clean_env(), timeout=timeout)


def _runs(uri: str):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("onslurm")
    return client, [r for r in client.search_runs([exp.experiment_id]) if "ablate.role" not in r.data.tags]


def test_a_job_array_trains_each_trial_once(slurm, database, tmp_path):
    storage, uri = database(), database()
    study, results = _study(tmp_path, 30, "[0, 1]"), tmp_path / "results"
    proc = _run(study, results, storage, uri, "--workers", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "workers: submitted 2 SLURM jobs" in proc.stdout
    _, runs = _runs(uri)
    assert sorted((r.data.tags["ablate.variant"], r.data.tags["ablate.seed"]) for r in runs) == [
        ("aft", "0"), ("aft", "1"), ("mha", "0"), ("mha", "1"),
    ]  # fmt: skip
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.tags["ablate.trial_key"] for r in runs) == sorted(planned_keys(study))
    rows = claims.WorkList(storage, "onslurm").rows()
    assert sorted(r.state for u, r in rows.items() if u.startswith("final/")) == ["done"] * 4
    assert len(list((results / "slurm" / "study").glob("*_log.out"))) >= 2  # submitit's job logs
    assert (results / "artifacts" / "onslurm").is_dir()  # beside the results, not in whatever folder ran it


def test_a_trial_on_two_devices_runs_as_one_job_of_two_tasks(slurm, database, tmp_path):
    """`train.devices: 2`: one job per worker, SLURM's two tasks its two ranks (torch.distributed
    set up from SLURM's environment), the trial's one run logged by rank 0, with one process's loss."""
    storage, uri = database(), database()
    text = engine_study("onslurm", 40, "[0]", ("mha",)).replace("log_every: 5}", "log_every: 5, devices: 2}")
    study, results = write_study(tmp_path, text), tmp_path / "results"
    proc = _run(study, results, storage, uri)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "workers: submitted 1 SLURM jobs" in proc.stdout
    assert len(list((results / "slurm" / "study").glob("*_log.out"))) == 2  # submitit's logs: one per task
    _, (run,) = _runs(uri)
    assert run.info.status == "FINISHED" and run.data.params["train.devices"] == "2"
    alone, alone_uri = write_study(tmp_path, text.replace(", devices: 2", ""), "alone.yaml"), database()
    assert _run(alone, tmp_path / "alone", database(), alone_uri).returncode == 0
    _, (single,) = _runs(alone_uri)
    assert run.data.metrics["val_loss"] == pytest.approx(single.data.metrics["val_loss"], rel=1e-5)


def test_a_job_cut_by_its_time_limit_is_requeued_and_resumes_from_its_checkpoint(slurm, database, tmp_path):
    """One job with a 1-minute limit and more training than one job's minute holds: SLURM's
    signal (30 s ahead of the limit) stops the worker after a whole step, it saves and hands the
    unit back, the job requeues, and the same run goes on from that step; no eval is logged twice.
    The steps take several jobs here, so that no machine finishes inside the first job's 30 s."""
    storage, uri = database(), database()
    study = write_study(tmp_path, engine_study("onslurm", STEPS_PAST_ONE_JOB, "[0]", ("mha",), eval_every=500))
    args = ["ablate", "run", str(study), "--results", str(tmp_path / "results"), "--executor", "slurm"]
    args += ["--storage", storage, "--tracking-uri", uri, "--workers", "1", "--time", "1"]
    launcher = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
    deadline = time.time() + 900
    while launcher.poll() is None and time.time() < deadline:
        _start_requeued_jobs_now()
        time.sleep(1)
    out, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, out[-3000:]
    client, runs = _runs(uri)
    (run,) = runs
    assert run.info.status == "FINISHED" and int(run.data.tags["ablate.resumed_from_step"]) > 0
    evals = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert evals == sorted(set(evals)) and evals[-1] == STEPS_PAST_ONE_JOB  # each eval once, to the end
    (unit,) = _finals(storage)
    assert claims.WorkList(storage, "onslurm").rows()[unit].attempts >= 2


def _start_requeued_jobs_now() -> None:
    """SLURM holds a requeued job for two minutes (its begin time); an administrator may start it
    sooner, which keeps this test short without changing what is tested. Not at once: a job
    started within a second of its requeue can find its last step's credential still being
    revoked, and SLURM kills it ("Job credential revoked"), so each waits REQUEUE_SETTLE_S."""
    queue = subprocess.run(["squeue", "-h", "-o", "%i %r %V"], check=False, capture_output=True, text=True).stdout
    for job, reason, requeued in (line.split() for line in queue.splitlines() if len(line.split()) == 3):
        if reason == "BeginTime" and time.time() - datetime.fromisoformat(requeued).timestamp() >= REQUEUE_SETTLE_S:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False, capture_output=True)


def _finals(storage: str) -> list[str]:
    return [u for u in claims.WorkList(storage, "onslurm").rows() if u.startswith("final/")]


def test_scancel_of_a_worker_hands_its_unit_to_another(slurm, database, tmp_path):
    storage, uri = database(), database()
    study, results = _study(tmp_path, 3000, "[0]"), tmp_path / "results"
    args = ["ablate", "run", str(study), "--results", str(results), "--executor", "slurm", "--workers", "2"]
    args += ["--storage", storage, "--tracking-uri", uri]
    launcher = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline:
        time.sleep(1)
        rows = claims.WorkList(storage, "onslurm").rows()
        running = [r for u, r in rows.items() if r.state == claims.RUNNING and u.startswith("final/")]
        if len(running) == 2 and (results / "checkpoints").exists() and any((results / "checkpoints").glob("*.pt")):
            victim = running[0]
    assert victim is not None, "the two jobs never both trained"
    shown = subprocess.run(
        ["ablate", "status", "--storage", storage, "--study", "onslurm"],
        check=True, capture_output=True, text=True, env=clean_env(),
    ).stdout  # fmt: skip
    assert "onslurm: 2 units:" in shown and victim.worker.rpartition(":")[2] in shown
    pid = victim.worker.rpartition(":")[2]
    job = subprocess.run(["ps", "-o", "args=", "-p", pid], check=False, capture_output=True, text=True).stdout
    assert "ablate" in job
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    job = f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"  # the worker's own array task
    subprocess.run(["scancel", job], check=True)
    out, _ = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, out[-3000:]  # the work list decides: its unit went on elsewhere
    assert out.count("did not complete") == 1 and "the other workers finished its units" in out, out[-3000:]
    _, runs = _runs(uri)
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 2
    taken = [r for r in runs if "ablate.resumed_from_step" in r.data.tags]
    assert len(taken) == 1 and victim.unit.endswith(taken[0].data.tags["ablate.trial_key"])


def test_a_detached_launch_returns_at_once_and_a_rerun_ends_the_study(slurm, database, tmp_path):
    storage, uri = database(), database()
    study, results = _study(tmp_path, 30, "[0]"), tmp_path / "results"
    started = time.monotonic()
    proc = _run(study, results, storage, uri, "--workers", "2", "--detach")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"ablate status --study onslurm --results {results} --storage {storage}" in proc.stdout
    assert time.monotonic() - started < 60
    deadline = time.time() + 300
    while time.time() < deadline and any(r.state != claims.DONE for u, r in _rows(storage) if u.startswith("final/")):
        time.sleep(1)
    args = ["ablate", "run", str(study), "--results", str(results), "--storage", storage, "--tracking-uri", uri]
    again = subprocess.run(args, check=False, capture_output=True, text=True, env=clean_env(), timeout=300)
    assert again.returncode == 0 and "2 of 2 trials already finished" in again.stdout, again.stdout[-2000:]
    finished = _run(study, results, storage, uri, "--workers", "2", "--detach")  # nothing left to submit
    assert finished.returncode == 0 and "0 units left, so 0 of the 2 workers" in finished.stdout, finished.stdout
    assert "submitted" not in finished.stdout
    client, runs = _runs(uri)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    parents = client.search_runs(
        [client.get_experiment_by_name("onslurm").experiment_id], "tags.`ablate.role` = 'variant'"
    )
    assert parents and {p.info.status for p in parents} == {"FINISHED"}


def _rows(storage: str) -> list:
    return list(claims.WorkList(storage, "onslurm").rows().items())


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--partition", "nosuch"], "SLURM refused the jobs: invalid partition specified: nosuch"),
        (["--slurm-extra", "nosuchkey=1"], "SLURM refused the jobs: unrecognized option '--nosuchkey=1'"),
        (["--gpus-per-node", "1"], "SLURM refused the jobs: Invalid generic resource (gres) specification"),
        (["--slurm-extra", "mem=1T"], "SLURM refused the jobs: Memory specification can not be satisfied"),
        (["--cpus-per-worker", "100"], "SLURM will never start these jobs as asked (pending: PartitionConfig)"),
    ],
    ids=["partition", "sbatch-option", "gpus-on-a-cpu-cluster", "memory", "cpus-past-any-node"],
)
def test_a_request_slurm_refuses_or_can_never_start_is_one_line(slurm, database, tmp_path, flags, said):
    """sbatch's refusals were submitit tracebacks; a job no node can hold waited forever, silently."""
    storage, uri = database(), database()
    proc = _run(_study(tmp_path, 30, "[0]"), tmp_path / "results", storage, uri, *flags, timeout=120)
    assert proc.returncode == 2 and f"ablate: error: {said}" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    queue = subprocess.run(["squeue", "-h", "-o", "%i %o"], check=True, capture_output=True, text=True).stdout
    assert str(tmp_path) not in queue  # none of its jobs left pending (another run's are not its to judge)


def test_the_test_cluster_listens_on_loopback_only(slurm):
    listening = subprocess.run(["ss", "-ltnp"], check=True, capture_output=True, text=True).stdout
    ports = [line.split()[3] for line in listening.splitlines() if "slurm" in line]
    assert ports and all(port.startswith("127.0.0.1:") for port in ports), ports

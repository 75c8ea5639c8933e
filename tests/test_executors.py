"""Where workers run: the executors' choices and refusals, and `ablate status`, which reads the
work list alone whatever started the workers."""

import time

import pytest

from ablate.cli import main
from ablate.core.errors import AblateError
from ablate.run import claims, status
from ablate.run.executors.base import Resources, shared_stores
from ablate.run.executors.local import gpu_slots
from ablate.run.executors.on_ray import one_host
from ablate.run.workers import Stores
from tests.conftest import TINY_STUDY, write_study


def test_fractional_gpus_pack_workers_on_each_gpu_in_turn():
    assert gpu_slots(4, 0.5, 2) == ["0", "0", "1", "1"]
    assert gpu_slots(3, 0.25, 1) == ["0", "0", "0"]
    assert gpu_slots(2, 2, 4) == ["0,1", "2,3"]
    assert gpu_slots(2, 0, 0) == [None, None]
    with pytest.raises(AblateError, match="4 workers with 0.5 GPU each need 2 GPUs; this machine has 1"):
        gpu_slots(4, 0.5, 1)
    assert Resources(gpus=0.25).gpu_fraction() == 0.25 and Resources(gpus=1).gpu_fraction() is None


def test_workers_on_other_hosts_refuse_stores_only_this_host_reaches(tmp_path):
    local = Stores.at(tmp_path, f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(AblateError, match="cannot share the SQLite work list .* give --storage postgresql"):
        shared_stores(local, "slurm")
    on_pg = Stores.at(tmp_path, f"sqlite:///{tmp_path}/mlflow.db", "postgresql+psycopg://u@db/optuna")
    with pytest.raises(AblateError, match="cannot reach the local MLflow store .* give --tracking-uri http"):
        shared_stores(on_pg, "ray")
    shared_stores(Stores.at(tmp_path, "http://mlflow:5000", "postgresql+psycopg://u@db/optuna"), "slurm")


def test_a_ray_cluster_of_this_machine_alone_may_use_its_sqlite_stores():
    assert one_host([{"NodeManagerAddress": "127.0.0.1", "Alive": True}], "127.0.0.1")
    assert one_host([{"NodeManagerAddress": "192.0.2.2"}], "192.0.2.2")
    assert not one_host([{"NodeManagerAddress": "127.0.0.1"}, {"NodeManagerAddress": "10.0.0.7"}], "192.0.2.2")
    assert one_host(
        [{"NodeManagerAddress": "192.0.2.2"}, {"NodeManagerAddress": "10.0.0.7", "Alive": False}], "192.0.2.2"
    )


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--executor", "slurm"], "--executor slurm runs workers on other hosts, which cannot share the SQLite"),
        (["--partition", "gpu"], "--partition, --time, --gpus-per-node and --slurm-extra are for --executor slurm"),
        (["--pack", "2"], "--pack and --detach are for --executor slurm"),
        (["--ray-address", "10.0.0.1:6379"], "--ray-address is for --executor ray"),
    ],
)
def test_a_launch_that_cannot_work_stops_in_one_line_before_anything_is_written(tmp_path, capsys, flags, said):
    study = write_study(tmp_path, TINY_STUDY)
    assert main(["run", str(study), "--results", str(tmp_path / "results"), *flags]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("flag", [["--gpus-per-worker", "0"], ["--executor", "k8s"], ["--slurm-extra", "account"]])
def test_malformed_executor_flags_are_one_line(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as e:
        main(["run", str(write_study(tmp_path, TINY_STUDY)), *flag])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_status_counts_every_unit_and_says_who_holds_the_running_ones(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    work = claims.WorkList(url, "tiny")
    work.register([f"final/mha/seed{s}/k{s}" for s in range(4)])
    work.register(["final/mha/seed0/k0"])  # a second worker registering changes nothing
    done = work.claim("final/mha/seed0/k0")
    time.sleep(0.05)
    work.end(done, claims.DONE)
    work.end(work.claim("final/mha/seed1/k1"), claims.FAILED, "val loss is nan")
    running = work.claim("final/mha/seed2/k2")
    (s,) = status.read(url)
    assert s.counts == {"done": 1, "running": 1, "open": 1, "failed": 1} and s.total == 4
    assert [r.unit for r in s.running] == ["final/mha/seed2/k2"] and s.running[0].worker == running.worker
    assert s.eta_s == pytest.approx(2 * (s_took := _took(url, "final/mha/seed0/k0")), rel=1e-6) and s_took >= 0.05
    assert main(["status", "--storage", url, "--study", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny: 4 units: 1 done, 1 running, 1 open, 1 failed" in out
    assert "final/mha/seed2/k2" in out and running.worker.rpartition(":")[2] in out
    assert "failed: final/mha/seed1/k1: val loss is nan" in out


def _took(url: str, unit: str) -> float:
    row = claims.WorkList(url, "tiny").rows()[unit]
    return row.ended - row.started


def test_status_without_a_work_list_is_one_line(tmp_path, capsys):
    assert main(["status", "--results", str(tmp_path)]) == 2
    assert "no work list at" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    claims.WorkList(url, "tiny")
    assert main(["status", "--storage", url, "--study", "other"]) == 2
    assert "no study 'other' in the work list" in capsys.readouterr().err


def test_a_ledger_from_before_the_timing_columns_is_read_and_then_extended(tmp_path):
    """Work lists written by an earlier ablate lack `started`/`ended`: status reads them as they
    are, and the next worker adds the columns."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(
            sa.text(
                "CREATE TABLE ablate_claims (study VARCHAR(200), unit VARCHAR(200), state VARCHAR(16) NOT NULL, "
                "worker VARCHAR(200), heartbeat FLOAT, attempts INTEGER NOT NULL, run_id VARCHAR(64), "
                "optuna_trial INTEGER, detail TEXT, PRIMARY KEY (study, unit))"
            )
        )
        c.execute(
            sa.text("INSERT INTO ablate_claims VALUES ('old', 'final/a', 'done', NULL, 1.0, 1, NULL, NULL, NULL)")
        )
    (s,) = status.read(url)
    assert s.counts["done"] == 1 and s.eta_s is None
    claims.WorkList(url, "old")
    assert {"started", "ended"} <= {c["name"] for c in sa.inspect(engine).get_columns("ablate_claims")}


@pytest.mark.parametrize(
    "argv, said",
    [
        (["run", "STUDY", "--cpus-per-worker", "100000"], "--cpus-per-worker 100000: this machine has"),
        (["worker", "STUDY", "--threads", "100000"], "--threads 100000: this machine has"),
    ],
)
def test_more_threads_than_this_machine_has_cores_is_one_line(tmp_path, capsys, argv, said):
    """A worker told to run 100,000 threads segfaulted ('exited with code -11')."""
    study = write_study(tmp_path, TINY_STUDY)
    results = tmp_path / "results"
    assert main([str(study) if a == "STUDY" else a for a in argv] + ["--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1
    assert not (results / "mlflow.db").exists()


@pytest.mark.slow
def test_no_more_workers_start_than_units_are_left(tmp_path, capsys, own_store):
    """--workers 3 on a study of one trial starts one; on a finished study, none."""
    one = TINY_STUDY.replace("seeds: [0, 1]", "seeds: [0]").replace(
        "  - {name: aft, model: {mixer: aft-simple, ffn: false}}\n", ""
    )
    study, results = write_study(tmp_path, one), tmp_path / "results"
    assert main(["run", str(study), "--results", str(results), "--workers", "3"]) == 0
    out = capsys.readouterr().out
    assert "1 units left, so 1 of the 3 workers asked for are started" in out and "workers: started 1" in out
    assert main(["run", str(study), "--results", str(results), "--workers", "3"]) == 0
    out = capsys.readouterr().out
    assert "0 units left, so 0 of the 3 workers" in out and "workers: started" not in out

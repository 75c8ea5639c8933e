"""One trial on several processes (`train.devices`), through torch.distributed over gloo on the CPU:
every rank ends with the same parameters, and N ranks take the steps one process takes on the
whole batch; micro-steps accumulate to the same step; a stop on the leader alone stops every
rank; a resumed group continues an uninterrupted one. In float64, so that "the same" is to
rounding far below any training effect."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import torch
import torch.multiprocessing as mp

from ablate.cli.ui import free_port
from ablate.core.config import TrainConfig
from ablate.data.corpus import in_memory
from ablate.model import build_model
from ablate.train import distributed, sharded
from ablate.train.distributed import Group
from ablate.train.trainer import Trainer, seed_everything
from tests.conftest import clean_env, run_ablate, write_study

SHAPE = {"mixer": "mha", "vocab_size": 64, "context": 16, "d_model": 32, "n_layers": 2, "n_heads": 2, "qkv_dim": 32}
SHAPE |= {"ffn_dim": 64}
TRAIN = {"steps": 12, "batch_size": 8, "lr": 1e-2, "warmup": 2, "eval_every": 4, "eval_batches": 2, "log_every": 1}


class StopHere(Exception):
    """The leader's callback stopping a trial (as pruning or a lost claim does)."""


def corpus():
    rng = np.random.default_rng(0)
    return in_memory(rng.integers(0, 64, 4096, dtype=np.int32), rng.integers(0, 64, 1024, dtype=np.int32), 64, "t")


def rank(index: int, size: int, port: int, train: dict, out: Path, stop_at: int | None, resume: bool) -> None:
    """One rank: train the model from seed 0, write its parameters and the leader's logged losses."""
    os.environ |= {"RANK": str(index), "LOCAL_RANK": str(index), "WORLD_SIZE": str(size)}
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torch.set_default_dtype(torch.float64)
    group = distributed.from_environment()
    seed_everything(0)
    trainer = Trainer(build_model(SHAPE), corpus(), TrainConfig(**train, device="cpu"), seed=0, group=group)
    checkpoint = out / "checkpoint.pt"
    if resume:
        trainer.load(checkpoint)
    logged = {}

    def callback(step, metrics, kind):
        logged[(step, kind)] = metrics
        if stop_at is not None and step == stop_at and kind == "log":
            raise StopHere

    try:
        trainer.fit(callback if group.leads else None, checkpoint if group.leads else None)
        ended = "finished"
    except (StopHere, KeyboardInterrupt) as e:  # the leader's stop; the others' Terminated
        ended = type(e).__name__
    held = None if trainer.sharded is None else sum(sharded.local(p).numel() for p in trainer.sharded.parameters())
    torch.save(
        {
            "params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
            "logged": logged,
            "ended": ended,
            "held": held,  # of a sharded model, the numbers this rank held
        },
        out / f"rank{index}.pt",
    )
    distributed.leave(group)


def train(out: Path, size: int, stop_at: int | None = None, resume: bool = False, **train) -> list[dict]:
    """Train with `size` ranks (1: a process alone, without torch.distributed); each rank's results."""
    out.mkdir(parents=True, exist_ok=True)
    settings = TRAIN | {"devices": size} | train
    if size == 1:
        torch.set_default_dtype(torch.float64)
        try:
            seed_everything(0)
            trainer = Trainer(build_model(SHAPE), corpus(), TrainConfig(**settings, device="cpu"), seed=0)
            logged = {}
            trainer.fit(lambda step, metrics, kind: logged.__setitem__((step, kind), metrics))
        finally:
            torch.set_default_dtype(torch.float32)
        return [{"params": dict(trainer.model.named_parameters()), "logged": logged, "ended": "finished"}]
    mp.spawn(rank, args=(size, free_port(), settings, out, stop_at, resume), nprocs=size)
    return [torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(size)]


def assert_same(a: dict, b: dict, exact: bool = False) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        if exact:
            assert torch.equal(value, b[name]), name
        else:
            torch.testing.assert_close(value.double(), b[name].double(), rtol=1e-9, atol=1e-11, msg=name)


def test_the_shards_of_a_batch_are_equal_disjoint_and_cover_it_in_order():
    x = torch.arange(24).view(12, 2)
    for size in (1, 2, 3, 4):
        shards = [Group(r, size).shard(x) for r in range(size)]
        assert {len(s) for s in shards} == {12 // size}
        assert torch.equal(torch.cat(shards), x)


@pytest.mark.slow
def test_two_ranks_match_each_other_exactly_and_one_process_on_the_whole_batch(tmp_path):
    alone = train(tmp_path / "alone", 1)[0]
    first, second = train(tmp_path / "two", 2)
    assert first["ended"] == second["ended"] == "finished"
    assert_same(first["params"], second["params"], exact=True)
    assert_same(first["params"], alone["params"])
    # the leader logs the whole batch's train loss and the whole val set's loss, as one process does
    # (to float32's rounding: the fused loss sums in float32, a mean of two halves against one whole)
    for key, metric in (((12, "log"), "train_loss"), ((12, "eval"), "val_loss"), ((12, "eval"), "val_accuracy")):
        assert first["logged"][key][metric] == pytest.approx(alone["logged"][key][metric], rel=1e-6)


@pytest.mark.slow
def test_micro_steps_accumulate_to_the_step_of_the_whole_batch(tmp_path):
    whole = train(tmp_path / "whole", 1)[0]
    assert_same(train(tmp_path / "parts", 1, micro_steps=4)[0]["params"], whole["params"])
    first, second = train(tmp_path / "two-parts", 2, micro_steps=2)
    assert_same(first["params"], second["params"], exact=True)
    assert_same(first["params"], whole["params"])


@pytest.mark.slow
def test_a_stop_on_the_leader_stops_every_rank_and_the_group_resumes_the_same_curve(tmp_path):
    whole = train(tmp_path / "whole", 2)
    cut = train(tmp_path / "cut", 2, stop_at=6)  # after the checkpoint at step 4's eval
    assert [r["ended"] for r in cut] == ["StopHere", "Terminated"]
    resumed = train(tmp_path / "cut", 2, resume=True)
    assert [r["ended"] for r in resumed] == ["finished", "finished"]
    assert_same(resumed[0]["params"], whole[0]["params"])
    for step in range(5, 13):
        assert resumed[0]["logged"][(step, "log")]["train_loss"] == pytest.approx(
            whole[0]["logged"][(step, "log")]["train_loss"], rel=1e-6
        )


@pytest.mark.slow
def test_a_sharded_group_takes_the_steps_of_one_process_each_rank_holding_half_the_model(tmp_path):
    alone = train(tmp_path / "alone", 1)[0]
    first, second = train(tmp_path / "two", 2, shard=True)
    assert first["ended"] == second["ended"] == "finished"
    assert_same(first["params"], second["params"], exact=True)  # gathered whole at the end
    assert_same(first["params"], alone["params"])
    total = sum(p.numel() for p in alone["params"].values())
    assert first["held"] + second["held"] == total and max(first["held"], second["held"]) < 0.6 * total
    for key, metric in (((12, "log"), "train_loss"), ((12, "eval"), "val_loss")):
        assert first["logged"][key][metric] == pytest.approx(alone["logged"][key][metric], rel=1e-6)
    # the gradient norms (logged per block) are those of the whole gradient, not of one rank's part
    for metric in ("grad_norm", "grad_norm/block0", "grad_norm/block1"):
        assert first["logged"][(12, "log")][metric] == pytest.approx(alone["logged"][(12, "log")][metric], rel=1e-6)
    parts = train(tmp_path / "parts", 2, shard=True, micro_steps=2)[0]
    assert_same(parts["params"], alone["params"])


@pytest.mark.slow
@pytest.mark.parametrize("cut_sharded", [True, False], ids=["sharded-then-not", "not-then-sharded"])
def test_a_checkpoint_resumes_sharded_or_not_on_the_same_curve(tmp_path, cut_sharded):
    """A sharded group's checkpoint holds the whole state in a single process's layout."""
    whole = train(tmp_path / "whole", 2)
    cut = train(tmp_path / "cut", 2, stop_at=6, shard=cut_sharded)
    assert [r["ended"] for r in cut] == ["StopHere", "Terminated"]
    resumed = train(tmp_path / "cut", 2, resume=True, shard=not cut_sharded)
    assert_same(resumed[0]["params"], whole[0]["params"])
    for step in range(5, 13):
        assert resumed[0]["logged"][(step, "log")]["train_loss"] == pytest.approx(
            whole[0]["logged"][(step, "log")]["train_loss"], rel=1e-6
        )


STUDY = """\
name: ranks
data: {source: stdlib, vocab_size: 512, max_bytes: 300000}
model: {context: 32, d_model: 32, n_layers: 2, n_heads: 2, qkv_dim: 32, ffn_dim: 64}
train: {steps: 400, batch_size: 8, warmup: 4, eval_every: 20, eval_batches: 2, log_every: 5, devices: 2}
variants:
  - {name: mha, model: {mixer: mha}}
seeds: [0]
"""


def trial_runs(results: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "ranks"]
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if "ablate.role" not in r.data.tags]


def one_process_val_loss(tmp_path: Path) -> float:
    """The same study with one process per trial (the same trial key: devices is how, not what)."""
    study = write_study(tmp_path, STUDY.replace(", devices: 2}", "}"), "alone.yaml")
    assert run_ablate("run", str(study), "--results", str(tmp_path / "alone")).returncode == 0
    _, (run,) = trial_runs(tmp_path / "alone")
    return run.data.metrics["val_loss"]


def start(study: Path, results: Path) -> subprocess.Popen:
    argv = ["ablate", "run", str(study), "--results", str(results)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())


def wait_for_checkpoint(results: Path, proc: subprocess.Popen, step: int) -> None:
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        for path in (results / "checkpoints").glob("*.pt") if (results / "checkpoints").exists() else ():
            try:
                if torch.load(path, weights_only=False)["step"] >= step:
                    return
            except (OSError, RuntimeError, EOFError):
                pass  # being replaced right now
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step {step} (the study ended with {proc.poll()})")


def ranks_of(proc: subprocess.Popen) -> list[psutil.Process]:
    """The study's worker ranks: the processes under it that torchrun started, by rank."""
    found = {}
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            env = child.environ()
        except psutil.Error:
            continue
        if "ablate.cli" in child.cmdline() and "LOCAL_RANK" in env:
            found[int(env["RANK"])] = child
    return [found[r] for r in sorted(found)]


def assert_resumed_to_the_end(tmp_path: Path, study: Path, results: Path) -> None:
    rerun = run_ablate("run", str(study), "--results", str(results))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming run" in rerun.stdout
    client, (run,) = trial_runs(results)  # only the leader opened a run
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == list(range(0, 401, 20))  # one unbroken curve: every eval once
    assert run.data.metrics["val_loss"] == pytest.approx(one_process_val_loss(tmp_path), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("shard", [False, True], ids=["ddp", "sharded"])
def test_a_study_with_devices_2_trains_each_trial_on_two_ranks_into_one_run_as_one_process_would(tmp_path, shard):
    study = write_study(tmp_path, STUDY.replace("devices: 2", f"devices: 2, shard: {str(shard).lower()}"))
    done = run_ablate("run", str(study), "--results", str(tmp_path / "results"))
    assert done.returncode == 0, done.stdout + done.stderr
    _, (run,) = trial_runs(tmp_path / "results")
    assert run.info.status == "FINISHED"
    assert run.data.params["train.devices"] == "2"
    assert run.data.metrics["val_loss"] == pytest.approx(one_process_val_loss(tmp_path), rel=1e-5)


@pytest.mark.slow
def test_sigterm_stops_every_rank_at_one_step_and_a_rerun_resumes_the_run(tmp_path):
    study, results = write_study(tmp_path, STUDY), tmp_path / "results"
    proc = start(study, results)
    wait_for_checkpoint(results, proc, 40)
    ranks = ranks_of(proc)
    assert len(ranks) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    assert not [r for r in ranks if r.is_running() and r.status() != psutil.STATUS_ZOMBIE]
    assert_resumed_to_the_end(tmp_path, study, results)


@pytest.mark.slow
def test_a_rank_killed_fails_its_group_within_the_timeout_and_a_rerun_resumes(tmp_path):
    study, results = write_study(tmp_path, STUDY), tmp_path / "results"
    proc = start(study, results)
    wait_for_checkpoint(results, proc, 40)
    (_, follower) = ranks_of(proc)
    follower.kill()
    assert proc.wait(timeout=120) != 0  # the group failed instead of hanging
    assert_resumed_to_the_end(tmp_path, study, results)


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--gpus-per-worker", "1"], "train.devices 2 needs a GPU per process; --gpus-per-worker 1 gives fewer"),
        (["--executor", "slurm", "--pack", "2"], "train.devices 2 with --pack 2: a job holds one worker's 2 ranks"),
        (["--gpus-per-worker", "0.5"], "train.devices 2 takes a GPU per process; --gpus-per-worker 0.5 packs workers"),
        (
            ["--workers", str(os.cpu_count())],
            f"train.devices 2 × {os.cpu_count()} workers: {2 * os.cpu_count()} processes",
        ),
    ],
    ids=["too-few-gpus", "slurm-packed", "packed-on-a-gpu", "more-processes-than-cores"],
)
def test_devices_the_launch_cannot_give_are_refused_in_one_line_before_anything_is_written(
    flags, said, tmp_path, capsys, own_store
):
    from ablate.cli import main

    results = tmp_path / "results"
    assert main(["run", str(write_study(tmp_path, STUDY)), "--results", str(results), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err
    assert not results.exists()


def test_sharding_on_a_torch_without_fsdp2_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    from ablate.cli import main

    monkeypatch.setitem(sys.modules, "torch.distributed.fsdp", None)  # as a torch before 2.6 has it
    study = write_study(tmp_path, STUDY.replace("devices: 2", "devices: 2, shard: true"))
    assert main(["plan", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        f"study.yaml:4: train.shard: torch {torch.__version__} has no FSDP2 (torch.distributed.fsdp.fully_shard" in err
    )


def test_the_plan_shows_the_processes_each_trial_trains_on(tmp_path, capsys):
    from ablate.cli import main

    assert main(["plan", str(write_study(tmp_path, STUDY.replace("devices: 2", "devices: 2, micro_steps: 2")))]) == 0
    assert (
        "devices: each trial trains on 2 processes (one GPU each on CUDA), each taking 1/2 of every batch in 2 micro-step(s)"
        in capsys.readouterr().out
    )
    assert main(["plan", str(write_study(tmp_path, STUDY.replace("devices: 2", "devices: 2, shard: true")))]) == 0
    assert "; sharded (FSDP), each holding 1/2 of the model: mha" in capsys.readouterr().out


@pytest.mark.slow
def test_a_search_on_two_ranks_trains_each_unit_and_a_diverging_one_fails_alone(tmp_path):
    """Optuna's search trials, one of them diverging on every rank at once, then the final trials:
    the ranks go from unit to unit together, and each unit has one run."""
    text = STUDY.replace("steps: 400", "steps: 30").replace(
        "seeds: [0]",
        "search: {space: {lr: {choice: [2.0e-3, 1.0e+6]}}, trials: 2, search_steps: 15, sampler: grid, pruner: none}\n"
        "seeds: [0]",
    )
    results = tmp_path / "results"
    done = run_ablate("run", str(write_study(tmp_path, text)), "--results", str(results))
    assert done.returncode == 0, done.stdout + done.stderr
    _, runs = trial_runs(results)
    phases = sorted((r.data.tags["ablate.phase"], r.info.status) for r in runs)
    assert phases == [("final", "FINISHED"), ("search", "FAILED"), ("search", "FINISHED")]

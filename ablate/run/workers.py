"""Where a study's workers find its stores, and how one is started: every worker of a study,
wherever it runs, is `ablate worker` told the same study file and stores, and claims its units
from the study's work list."""

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stores:
    """A study's stores: the results folder (data cache, local MLflow store), the MLflow
    tracking URI, the Optuna storage (which also holds the work list) and the checkpoints."""

    results: Path
    uri: str
    storage: str
    checkpoints: Path

    @classmethod
    def at(cls, results: Path, uri: str, storage: str | None = None, checkpoints: Path | None = None) -> "Stores":
        """The stores a command names, each defaulting to its place under results."""
        storage = storage or f"sqlite:///{results.resolve() / 'optuna.db'}"
        return cls(results, uri, storage, checkpoints or results / "checkpoints")


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker of a study is told."""

    study: Path
    stores: Stores
    smoke: bool = False
    data: Path | None = None  # --data: the study's data.source replaced
    devices: int = 1  # processes per trial (train.devices): the worker starts as that many ranks under torchrun

    def argv(self, threads: int | None = None, gpu_fraction: float | None = None, torchrun: bool = True) -> list[str]:
        """The `ablate worker` command line (`gpu_fraction`: the share of its GPU's memory it may
        take), under torchrun where a trial trains on several processes (`threads` then per rank),
        unless the engine starts the ranks itself (`torchrun=False`: SLURM's tasks)."""
        s = self.stores
        argv = [sys.executable, "-m", "ablate.cli", "worker", str(self.study.resolve()), "--no-progress"]
        if self.devices > 1 and torchrun:
            ranks = ["-m", "ablate.run.ranks", "--standalone", f"--nproc-per-node={self.devices}"]
            argv[1:1] = ranks
            threads = max(1, threads // self.devices) if threads else None
        argv += ["--results", str(s.results.resolve()), "--tracking-uri", s.uri, "--storage", s.storage]
        argv += ["--checkpoints", str(s.checkpoints.resolve())] + ["--smoke"] * self.smoke
        argv += ["--data", str(self.data.resolve())] if self.data else []
        argv += ["--gpu-fraction", f"{gpu_fraction:g}"] if gpu_fraction else []
        return argv + (["--threads", str(threads)] if threads else [])

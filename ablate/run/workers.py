"""Where a study's workers find its stores, and how one is started: every worker of a study,
wherever it runs, is `ablate worker` told the same study file and stores, and claims its units
from the study's work list."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ablate.errors import AblateError


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

    def argv(self, threads: int | None = None) -> list[str]:
        """The `ablate worker` command line."""
        s = self.stores
        argv = [sys.executable, "-m", "ablate.cli", "worker", str(self.study.resolve()), "--no-progress"]
        argv += ["--results", str(s.results.resolve()), "--tracking-uri", s.uri, "--storage", s.storage]
        argv += ["--checkpoints", str(s.checkpoints.resolve())] + ["--smoke"] * self.smoke
        argv += ["--data", str(self.data.resolve())] if self.data else []
        return argv + (["--threads", str(threads)] if threads else [])


def spawn(spec: WorkerSpec, n: int, console) -> None:
    """Start n workers on this machine (each in its own session, so that Ctrl-C reaches them
    once, forwarded from here, with the CPU's cores split between them) and wait for them all."""
    threads = max(1, (os.cpu_count() or 1) // n)
    procs = [subprocess.Popen(spec.argv(threads), start_new_session=True) for _ in range(n)]
    console.print(f"workers: started {n} (pids {', '.join(str(p.pid) for p in procs)})")
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.send_signal(2)  # SIGINT: each marks its run KILLED and lets go of its claim
        for p in procs:
            p.wait()
        raise
    if bad := [c for c in codes if c != 0]:
        raise AblateError(f"{len(bad)} of {n} workers exited with an error (codes {bad}); rerun to resume")

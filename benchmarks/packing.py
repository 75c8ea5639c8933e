"""Packing on one GPU: a study run one trial at a time, then the same study with K workers
sharing the GPU (`ablate run --workers K --gpus-per-worker 1/K`), each into its own results
folder (without a GPU, the K workers share the CPU cores instead). The time that counts is the
trials' own, from the work list: the first unit taken up to the last one ended (building the
data and starting MLflow come before it and are the same for both). Prints both times and the
ratio.

    python benchmarks/packing.py [--study benchmarks/packing.yaml] [--workers 4] [--out DIR]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
import torch

from ablate.run import claims
from ablate.run.status import SETUP


def run(study: Path, results: Path, workers: int) -> float:
    """Runs the study; returns its wall time in seconds."""
    argv = [sys.executable, "-m", "ablate.cli", "run", str(study), "--results", str(results), "--workers", str(workers)]
    if torch.cuda.is_available():
        argv += ["--gpus-per-worker", f"{1 / workers:g}"]
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


def trials_span(results: Path) -> tuple[float, int]:
    """From the work list: seconds from the first trial taken up to the last ended, and how many."""
    engine = sa.create_engine(f"sqlite:///{results / 'optuna.db'}")
    table = sa.Table(claims.TABLE.name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as c:
        rows = [r for r in c.execute(sa.select(table)) if r.unit != SETUP and r.state == claims.DONE]
    engine.dispose()
    return max(r.ended for r in rows) - min(r.started for r in rows), len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path(__file__).with_name("packing.yaml"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="results folders here (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="packing-"))
    spans = {}
    for workers in (1, args.workers):
        results = out / f"workers-{workers}"
        wall = run(args.study, results, workers)
        span, n = trials_span(results)
        spans[workers] = span
        print(f"{workers} worker(s): {n} trials in {span:.1f} s ({span / n:.1f} s per trial), {wall:.1f} s wall in all")
    print(
        f"{args.workers} workers at once: {spans[1] / spans[args.workers]:.2f}x the trials per second of one at a time"
    )


if __name__ == "__main__":
    main()

"""ablate's Trainer against the bare loop of reference.py, at Strawberry's mha shape, in one process.

The two alternate (bare, ablate, ablate, bare, ...) so that drifts of the machine fall on both
alike. Each run builds a fresh model, trains `--warmup` untimed steps and one eval (compiling
both graphs under --compile), then times `--steps` steps. The timed stretch holds what a study
does: the loss read back every 10 steps, an eval of 3 batches every 30 steps and a checkpoint
after it; for ablate, metrics go to a real MLflow run (a SQLite store in a temporary directory)
in one batch per eval. Prints tokens/s per run, the median ratio ablate/bare, and the share of
this machine's fp32 matmul peak (a 2048³ matmul) each reaches.

    python benchmarks/bare_vs_ablate.py [--runs 5] [--steps 50] [--mode both|eager|compiled]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference

from ablate import bench
from ablate.core.config import TrainConfig
from ablate.data.corpus import Corpus, in_memory
from ablate.model import build_model
from ablate.plan.flops import flops_per_token
from ablate.tracking.store import Tracker
from ablate.train.trainer import Trainer

SHAPE = reference.Shape()
MHA = {"mixer": "mha", **{k: getattr(SHAPE, k) for k in SHAPE.__dataclass_fields__}}


def data(vocab: int) -> Corpus:
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, vocab, 2_000_000, dtype=np.int32), rng.integers(0, vocab, 200_000, dtype=np.int32)
    return in_memory(train, val, vocab, "random tokens")


def bare(corpus, recipe: reference.Recipe, warmup: int, steps: int, compile: bool, out: Path) -> float:
    loop = reference.Loop(SHAPE, recipe, corpus.train, corpus.val, compile=compile)
    loop.run(warmup)
    loop.estimate_loss()
    start = time.perf_counter()
    for _ in range(steps // recipe.eval_every):  # nanoGPT saves a checkpoint at every eval
        loop.run(recipe.eval_every)
        torch.save({"model": loop.model.state_dict(), "optimizer": loop.opt.state_dict()}, out / "bare.pt")
    loop.run(steps % recipe.eval_every)
    return steps * recipe.batch_size * SHAPE.context / (time.perf_counter() - start)


def ablate(corpus, recipe: reference.Recipe, warmup: int, steps: int, compile: bool, tracker, exp_id, out) -> float:
    cfg = TrainConfig(
        steps=warmup + steps,
        batch_size=recipe.batch_size,
        warmup=recipe.warmup,
        eval_every=recipe.eval_every,
        eval_batches=recipe.eval_batches,
        log_every=recipe.log_every,
        device="cpu",
        compile=compile,
    )
    torch.manual_seed(0)
    trainer = Trainer(build_model(MHA), corpus, cfg, seed=0)
    run = tracker.start(exp_id, f"bench-{'compiled' if compile else 'eager'}", {}, {"compile": str(compile)})
    for _ in range(warmup):
        trainer.train_step()
    trainer.evaluate()
    start = time.perf_counter()
    trainer.fit(run.record, out / "ablate.pt")
    elapsed = time.perf_counter() - start
    run.end("FINISHED")
    return steps * recipe.batch_size * SHAPE.context / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps", type=int, default=50, help="timed steps per run (a multiple of 10)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--mode", choices=("both", "eager", "compiled"), default="both")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = reference.Recipe(steps=args.warmup + args.steps)
    corpus = data(SHAPE.vocab_size)
    peak = bench.matmul_peak(torch.device("cpu"))
    flops = flops_per_token(build_model(MHA, device="meta"), training=True)
    print(f"machine: {torch.get_num_threads()} threads; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (2048³)")
    print(f"mha at the Strawberry shape: {flops / 1e6:.2f} MFLOPs per training token; {args.steps} timed steps per run")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        tracker = Tracker(f"sqlite:///{out / 'mlflow.db'}", out)
        exp_id = tracker.experiment("bench", "mha", ["mha"])
        for compile in {"both": (False, True), "eager": (False,), "compiled": (True,)}[args.mode]:
            label = "compiled" if compile else "eager"
            ratios, speeds = [], {"bare": [], "ablate": []}
            for i in range(args.runs):
                order = ("bare", "ablate") if i % 2 == 0 else ("ablate", "bare")
                got = {}
                for who in order:
                    if who == "bare":
                        got[who] = bare(corpus, recipe, args.warmup, args.steps, compile, out)
                    else:
                        got[who] = ablate(corpus, recipe, args.warmup, args.steps, compile, tracker, exp_id, out)
                    speeds[who].append(got[who])
                ratios.append(got["ablate"] / got["bare"])
                print(
                    f"{label} run {i + 1}: bare {got['bare']:,.0f} tokens/s, ablate {got['ablate']:,.0f} tokens/s, "
                    f"ratio {ratios[-1]:.3f}",
                    flush=True,
                )
            for who in ("bare", "ablate"):
                median = statistics.median(speeds[who])
                print(f"{label} {who}: median {median:,.0f} tokens/s = {median * flops / peak:.1%} of the fp32 peak")
            print(f"{label}: median ratio ablate/bare {statistics.median(ratios):.3f} over {args.runs} runs")


if __name__ == "__main__":
    main()

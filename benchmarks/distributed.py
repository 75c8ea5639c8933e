"""One trial on 1, 2, … processes (`train.devices`): tokens/s of the whole group, its scaling
efficiency against one process, and the MiB of training state (parameters, gradients, optimizer
state) each rank holds. Each rank trains its share of every batch under DistributedDataParallel,
or with `--shard` under FSDP (`train.shard`), gloo on a CPU (where the cores are split between the
ranks), NCCL and a GPU each on CUDA, as `ablate run` does with `train.devices: N`.

    python benchmarks/distributed.py [--processes 1 2] [--shard] [--study S --variant V] [--steps 30] [--warmup 5]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ablate import bench
from ablate.cli.ui import free_port
from ablate.model import build_model
from ablate.nn.devices import synchronize
from ablate.train import distributed, sharded
from ablate.train.trainer import Trainer, seed_everything

ROOT = Path(__file__).resolve().parent.parent


def held_mib(trainer: Trainer) -> float:
    """The training state this rank holds: its parameters, their gradients, its optimizer state."""
    params = list(trainer.model.parameters())
    state = [v for o in trainer.optimizers for s in o.state.values() for v in s.values() if torch.is_tensor(v)]
    tensors = [sharded.local(t) for t in [*params, *(p.grad for p in params if p.grad is not None), *state]]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def rank(index: int, size: int, port: int, target, steps: int, warmup: int, threads: int, out: Path) -> None:
    os.environ |= {"RANK": str(index), "LOCAL_RANK": str(index), "WORLD_SIZE": str(size)}
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torch.set_num_threads(threads)
    group = distributed.from_environment()
    _, model, train = target
    seed_everything(0)
    corpus = bench._random_tokens(model.vocab_size, model.context, train.batch_size, train.eval_batches)
    trainer = Trainer(build_model(model), corpus, train, seed=0, group=group)
    for _ in range(warmup):
        trainer.train_step()
    synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    trainer.read_train_metrics()  # waits for the last step, on every rank
    seconds = time.perf_counter() - start
    if group.leads:
        (out / f"{size}.txt").write_text(f"{train.batch_size * model.context * steps / seconds} {held_mib(trainer)}")
    distributed.leave(group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--study", type=Path, default=ROOT / "studies/strawberry_seed.yaml")
    parser.add_argument("--variant", default="mha")
    parser.add_argument("--shard", action="store_true", help="shard the model over the processes (FSDP)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    (target,) = bench.targets(args.study, [args.variant], {}, {"device": "auto"})
    name, model, train = target
    cores = os.cpu_count() or 1
    where = f"{torch.cuda.device_count()} GPUs ({torch.cuda.get_device_name()})" if cuda else f"{cores} CPU cores"
    print(f"{name} of {args.study.name}: batch {train.batch_size} × context {model.context}, on {where}")
    print(f"{'processes':>10}{'tokens/s':>12}{'speed-up':>10}{'efficiency':>12}{'MiB/rank':>10}")
    speeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.processes:
            threads = max(1, cores // n) if not cuda else torch.get_num_threads()
            trained = target if n == 1 else (name, model, train.model_copy(update={"devices": n, "shard": args.shard}))
            arguments = (n, free_port(), trained, args.steps, args.warmup, threads, Path(tmp))
            mp.spawn(rank, args=arguments, nprocs=n)
            speeds[n], held = map(float, (Path(tmp) / f"{n}.txt").read_text().split())
            per_process = speeds[args.processes[0]] / args.processes[0]  # at the first count
            speedup = speeds[n] / speeds[args.processes[0]]
            efficiency = speeds[n] / (per_process * n)
            print(f"{n:>10}{speeds[n]:>12,.0f}{speedup:>9.2f}×{efficiency:>11.0%}{held:>10.1f}")


if __name__ == "__main__":
    main()

"""`ablate bench`: how fast each variant trains on this machine.

Per variant: tokens/s and ms/step over timed steps of the real Trainer (after warm-up steps),
peak memory, training FLOPs per token from torch's FLOP counter, and the FLOP/s that makes,
set against this machine's matmul peak measured by the same command; and the bytes a step
moves per token, and the bytes/s that makes, set against the memory bandwidth measured here.
The two give the roofline: the tokens/s the slower of compute and memory allows. Speed does
not depend on the text, so the batches are random tokens.
"""

import multiprocessing
import queue
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablate.core.config import ModelConfig, TrainConfig
from ablate.core.errors import AblateError, did_you_mean
from ablate.data.corpus import Corpus, in_memory
from ablate.model import build_model
from ablate.nn.devices import device_named, synchronize
from ablate.plan.flops import bytes_per_token, flops_per_token
from ablate.train.trainer import Trainer, seed_everything

DEFAULT_VARIANTS = ("mha", "aft-simple", "retention")
PEAK_SIZE = 2048  # the matmul whose speed is the peak: 2048³, fp32 on a CPU, bf16 on a GPU
STREAM_SIZE = 1 << 25  # floats per array of the bandwidth triad: 128 MiB each, far beyond any cache


def matmul_peak(device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of a square PEAK_SIZE matmul here, the best of `repeats` (fp32 on CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, dtype=dtype)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * PEAK_SIZE**3 / best


def stream_bandwidth(device: torch.device, repeats: int = 10) -> float:
    """Bytes/s of STREAM's triad here (a = b + 3·c over fp32 arrays far larger than the caches:
    two reads and a write per element), the best of `repeats`."""
    b, c = torch.rand(STREAM_SIZE, device=device), torch.rand(STREAM_SIZE, device=device)
    a = torch.empty_like(b)
    best = float("inf")
    for _ in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 3 * a.numel() * a.element_size() / best


def roofline(row: dict[str, Any], peak: float, bandwidth: float) -> dict[str, Any]:
    """The row with its share of the matmul peak and of the stream bandwidth, and the tokens/s
    the roofline allows: compute at the peak or memory at the bandwidth, whichever is slower."""
    compute, memory = row["flops_per_token"] / peak, row["bytes_per_token"] / bandwidth  # seconds per token
    seconds = max(compute, memory)
    return {
        **row,
        "peak_flops_per_s": peak,
        "fraction_of_peak": row["achieved_flops_per_s"] / peak,
        "stream_bytes_per_s": bandwidth,
        "fraction_of_bandwidth": row["achieved_bytes_per_s"] / bandwidth,
        "roofline_tokens_per_s": 1 / seconds,
        "bound_by": "memory" if memory > compute else "compute",
        "fraction_of_roofline": row["tokens_per_s"] * seconds,  # of the whole machine's: copies share it
    }


@contextmanager
def peak_memory(device: torch.device):
    """Yields a function that returns the peak memory since entry: allocated tensors on CUDA;
    on a CPU the process's peak resident size (Linux: reset at entry; elsewhere since start)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: torch.cuda.max_memory_allocated(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set
        reset = True
    except OSError:
        reset = False
    if reset:
        yield _vm_hwm
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        yield lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _random_tokens(vocab_size: int, context: int, batch_size: int, eval_batches: int) -> Corpus:
    """A corpus of uniformly random token ids: speed does not depend on the text."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, vocab_size, size=max(1 << 20, 4 * batch_size * (context + 1)), dtype=np.int32)
    val = rng.integers(0, vocab_size, size=(eval_batches + 1) * batch_size * (context + 1), dtype=np.int32)
    return in_memory(train, val, vocab_size, "random tokens")


Target = tuple[str, ModelConfig, TrainConfig]  # a variant's name, its model and its train settings


def targets(study: Path | None, names: list[str], overrides: dict[str, Any], train: dict[str, Any]) -> list[Target]:
    """What to bench: a study's planned variants (all, or those named), or registered mixers at the
    default shape (Strawberry's); `overrides` (model settings) and `train` on top of
    each, checked as a study's are."""
    from pydantic import ValidationError

    from ablate.plan import study as study_mod
    from ablate.plan.explain import first_error

    if study is not None:
        planned = study_mod.load(study)
        first = {t.variant: t for t in reversed(planned.trials)}
        unknown = [n for n in names if n not in first]
        if unknown:
            raise AblateError(f"--variant {unknown[0]!r} is not a variant of {planned.name}: {', '.join(first)}")
        names = names or list(dict.fromkeys(t.variant for t in planned.trials))
        chosen = [(n, first[n].model.model_dump(), first[n].train.model_dump(exclude_unset=True)) for n in names]
    else:
        chosen = [(n, {"mixer": n}, {}) for n in names or DEFAULT_VARIANTS]
    out = []
    for name, model, base in chosen:
        train_cfg = TrainConfig(**{**base, **train})
        try:
            built = study_mod.model_for({**model, **overrides}, train_cfg.batch_size, train_cfg.device)
        except ValidationError as e:
            loc, msg = first_error(e)
            if msg == "unknown key":
                msg += did_you_mean(str(loc[-1]), ModelConfig.model_fields)
            raise AblateError(f"{name}: model{''.join(f'.{p}' for p in loc)}: {msg}") from None
        except AblateError as e:
            raise AblateError(f"{name}: {e}") from None
        out.append((name, built.cfg, train_cfg))
    return out


def run(chosen: list[Target], steps: int, warmup: int, parallel: int, device: str, progress) -> list[dict[str, Any]]:
    """Each target benched (as `parallel` copies at once, and alone, when parallel > 1) with
    this machine's matmul peak and stream bandwidth beside it; `progress(row)` sees each row."""
    where = device_named(device)
    peak, bandwidth = matmul_peak(where), stream_bandwidth(where)
    rows = []
    for name, model, train_cfg in chosen:
        if parallel > 1:
            row = measure_parallel(name, model, train_cfg, steps, warmup, parallel)
            row["single_tokens_per_s"] = measure(name, model, train_cfg, steps, warmup)["tokens_per_s"]
            row["speedup_over_single"] = row["tokens_per_s"] / row["single_tokens_per_s"]
        else:
            row = measure(name, model, train_cfg, steps, warmup)
        rows.append(roofline(row, peak, bandwidth))
        progress(rows[-1])
    return rows


def measure(
    name: str,
    model: ModelConfig,
    train: TrainConfig,
    steps: int,
    warmup: int,
    barrier=None,
) -> dict[str, Any]:
    """Train `warmup` steps, then time `steps` more; one result row. With `barrier`, wait on it
    between the two, so that parallel copies time the same stretch of wall clock."""
    cfg = TrainConfig(**{**train.model_dump(exclude_unset=True), "steps": warmup + steps, "warmup": 0})
    seed_everything(0)
    built = build_model(model)
    corpus = _random_tokens(built.cfg.vocab_size, built.cfg.context, cfg.batch_size, cfg.eval_batches)
    trainer = Trainer(built, corpus, cfg, seed=0)
    warmup_s, elapsed, loss, peak_bytes = _timed(trainer, warmup, steps, barrier)
    tokens = steps * cfg.batch_size * built.cfg.context
    flops = flops_per_token(build_model(model, device="meta"), training=True)
    moved = bytes_per_token(build_model(model, device="meta"), cfg.batch_size)  # fresh: no gradients to add to
    return {
        "variant": name,
        "mixer": built.cfg.mixer,
        "device": str(trainer.device),
        "compile": cfg.compile,
        "threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size,
        "context": built.cfg.context,
        "steps": steps,
        "n_params": built.n_params(),
        "n_params_non_embedding": built.n_params(non_embedding=True),
        "tokens_per_s": tokens / elapsed,
        "ms_per_step": 1000 * elapsed / steps,
        "warmup_s": warmup_s,
        "peak_mem_bytes": peak_bytes,
        "flops_per_token": flops,
        "achieved_flops_per_s": flops * tokens / elapsed,
        "bytes_per_token": moved,
        "achieved_bytes_per_s": moved * tokens / elapsed,
        "train_loss": loss,
    }


def _timed(trainer: Trainer, warmup: int, steps: int, barrier) -> tuple[float, float, float, int]:
    """(the warm-up's seconds, the timed steps' seconds, their mean train loss, the peak memory)."""
    with peak_memory(trainer.device) as peak:
        start = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step()
        synchronize(trainer.device)
        warmup_s = time.perf_counter() - start
        if barrier is not None:
            barrier.wait()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        loss = trainer.loss_sum.item() / trainer.n_since  # waits for the last step
        elapsed = time.perf_counter() - start
        return warmup_s, elapsed, loss, peak()


def measure_parallel(
    name: str, model: ModelConfig, train: TrainConfig, steps: int, warmup: int, copies: int
) -> dict[str, Any]:
    """`copies` trainings of the same variant at once, each in its own process (on a GPU they
    share it; on a CPU they share its cores, split evenly): their total tokens/s."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(copies), context.Queue()
    threads = max(1, torch.get_num_threads() // copies)
    processes = [
        context.Process(target=_copy, args=(name, model, train, steps, warmup, barrier, results, threads))
        for _ in range(copies)
    ]
    for p in processes:
        p.start()
    rows = []
    while len(rows) < copies:
        try:
            rows.append(results.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:  # killed without a word (out of memory, a signal): the others wait in vain
                for p in processes:
                    p.kill()
                raise AblateError(f"a parallel copy died with exit code {dead[0].exitcode}") from None
    for p in processes:
        p.join()
    failed = [r for r in rows if isinstance(r, str)]
    if failed:
        raise AblateError(f"a parallel copy failed: {failed[0]}")
    total = sum(r["tokens_per_s"] for r in rows)
    return {
        **rows[0],
        "parallel": copies,
        "threads": threads,
        "tokens_per_s": total,
        "ms_per_step": max(r["ms_per_step"] for r in rows),
        "peak_mem_bytes": max(r["peak_mem_bytes"] for r in rows),
        "achieved_flops_per_s": sum(r["achieved_flops_per_s"] for r in rows),
        "achieved_bytes_per_s": sum(r["achieved_bytes_per_s"] for r in rows),
    }


def _copy(name, model, train, steps, warmup, barrier, results, threads) -> None:
    torch.set_num_threads(threads)
    try:
        results.put(measure(name, model, train, steps, warmup, barrier))
    except Exception as e:  # noqa: BLE001 (any failure of a copy is reported by the parent, which raises it)
        barrier.abort()
        results.put(f"{type(e).__name__}: {e}")


def print_table(rows: list[dict], device: torch.device, parallel: bool, console) -> None:
    """The bench rows as a table, with what the peak, the bandwidth and the counts mean beneath it."""
    from rich.table import Table

    precision = "bf16" if device.type == "cuda" else "fp32"
    table = Table(title=f"bench on {device} ({rows[0]['threads']} threads), batch {rows[0]['batch_size']}")
    columns = ["variant", "non-emb params", "tokens/s", "ms/step", "peak mem", "FLOPs/token", "GFLOP/s", "of peak"]
    columns += ["bytes/token", "GB/s", "of stream", "of roofline"]
    columns += ["×K copies", "vs one"] if parallel else []
    for col in columns:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        cells = [
            r["variant"],
            f"{r['n_params_non_embedding']:,}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['ms_per_step']:.1f}",
            f"{r['peak_mem_bytes'] / 2**20:,.0f} MiB",
            f"{r['flops_per_token'] / 1e6:,.2f} M",
            f"{r['achieved_flops_per_s'] / 1e9:,.1f}",
            f"{r['fraction_of_peak']:.1%}",
            f"{r['bytes_per_token'] / 1e6:,.2f} MB",
            f"{r['achieved_bytes_per_s'] / 1e9:,.1f}",
            f"{r['fraction_of_bandwidth']:.1%}",
            f"{r['fraction_of_roofline']:.1%} ({r['bound_by']})",
        ]
        if parallel:
            cells += [str(r["parallel"]), f"{r['speedup_over_single']:.2f}×"]
        table.add_row(*cells)
    console.print(table)
    r = rows[0]
    print(
        f"peak: a {PEAK_SIZE}³ {precision} matmul here runs at {r['peak_flops_per_s'] / 1e9:,.1f} GFLOP/s; stream: "
        f"a triad over 128 MiB arrays moves {r['stream_bytes_per_s'] / 1e9:,.1f} GB/s; FLOPs/token: one training "
        "step's matrix products (torch's counter, attention dense) plus 3× the mixers' element-wise work; "
        "bytes/token: every operation's inputs and outputs, read and written once (unfused); roofline: the "
        "tokens/s of the slower of the two at peak and stream rate (bound by that one)"
    )
    if device.type == "cpu":
        print("peak mem on a CPU: the process's peak resident size, interpreter and libraries included")

"""The GPU suite: everything worth knowing about ablate on one card, in one command, for the short
loans of a bare machine. Each part runs in its own process under its own time limit, so one slow
part (a compile, fla's first-call autotuning) cannot eat the others' time; each records its figures
as it goes, so a part cut off keeps what it measured. Warm-up (compiling, autotuning) is timed
apart from the measurement and reported beside it.

    python benchmarks/gpu_suite.py OUT [--nanogpt DIR] [--parts 1 2 ...] [--limit 3=200] [--dry-run]

The parts:
  1. mha at GPT-2 small (preset nanogpt, bf16, compiled, flash SDPA): tokens/s and MFU by
     nanoGPT's formula, beside nanoGPT's own train.py (a checkout given by --nanogpt) run on the
     same card with the same batch and bench.py's settings.
  2. The Strawberry recipe (studies/strawberry_seed.yaml's mha): tokens/s, and the wall time of
     the whole recipe (the Trainer's 10k steps with its evals) alone and with 5 seeds at once.
  3. Every mixer with a `kernel` option, alone at d_model 1024, 16 heads, contexts 2k and 16k,
     forward and backward under bf16 autocast: kernel fla against kernel torch against mha; and
     fla against torch on the same weights through a 2-layer model (logits and every gradient).
  4. Decoding from state: ms per token at contexts 1k and 16k, batch 1 and 64.
  5. Packing: 1, 2, 4 and 8 copies of a small trial training at once on the card, trials per second.

Writes OUT/gpu_suite.json and OUT/gpu_suite.md (the card, its peak, the versions), and each part's
log beside them. It installs nothing. `--dry-run` runs every part at tiny shapes on the CPU
(kernel torch) in under a minute, as a test does. docs/speed.md says how to run it on a bare machine.
"""

import argparse
import json
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ablate import bench
from ablate.core.config import TrainConfig
from ablate.core.errors import first_line
from ablate.inference import cost
from ablate.mixers import registry
from ablate.model import build_model
from ablate.nn.devices import autocast, synchronize
from ablate.nn.ops.kernels import error_ratio, fla_installed
from ablate.train.trainer import Trainer, seed_everything

ROOT = Path(__file__).resolve().parent.parent
LIMITS = {1: 170, 2: 100, 3: 110, 4: 50, 5: 50}  # seconds per part on the card: 8 minutes in all
DRY_LIMIT = 60  # seconds per part in a dry run
# dense bf16 peaks (FLOP/s) from the vendors' sheets, matched on the card's name in this order
PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
)
RECURRENT = tuple(n for n in registry.variants() if "kernel" in registry.mixer_options(n, {}))  # fla or torch
DECODERS = ("mha", "retnet", "gla", "gated-deltanet", "mamba2")

GPT2 = {"mixer": "mha", "preset": "nanogpt", "vocab_size": 50304, "context": 1024, "d_model": 768, "n_layers": 12}
GPT2 |= {"n_heads": 12, "qkv_dim": 768, "ffn_dim": 3072}
SHAPES = {  # per part: the card's shapes, and the dry run's on a CPU
    "full": {
        1: {"model": GPT2, "batch": 16, "warmup": 10, "steps": 20},
        2: {"variant": "mha", "steps": 200, "warmup": 20, "recipe_steps": None, "seeds": 5},
        3: {
            "d_model": 1024,
            "n_heads": 16,
            "contexts": (2048, 16384),
            "tokens": 32768,
            "repeats": 5,
            "diff_context": 2048,
        },
        4: {"d_model": 768, "n_heads": 12, "n_layers": 6, "contexts": (1024, 16384), "batches": (1, 64), "steps": 16},
        5: {"copies": (1, 2, 4, 8), "steps": 100, "warmup": 20},
    },
    "dry": {
        1: {
            "model": GPT2
            | {"vocab_size": 512, "context": 64, "d_model": 64, "n_layers": 2, "n_heads": 2}
            | {"qkv_dim": 64, "ffn_dim": 256},
            "batch": 2,
            "warmup": 2,
            "steps": 3,
        },
        2: {"variant": "mha", "steps": 5, "warmup": 2, "recipe_steps": 10, "seeds": 2},
        3: {"d_model": 64, "n_heads": 4, "contexts": (64, 256), "tokens": 512, "repeats": 2, "diff_context": 64},
        4: {"d_model": 64, "n_heads": 4, "n_layers": 2, "contexts": (64, 128), "batches": (1, 4), "steps": 4},
        5: {"copies": (1, 2), "steps": 5, "warmup": 2},
    },
}


class Record:
    """A part's figures, written to its JSON file at every addition: a part cut off keeps them."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def __call__(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1))
        print(f"{key}: {value}", flush=True)


def timed(device: torch.device, fn, repeats: int = 1) -> float:
    """Seconds per call of fn over `repeats` calls, the device's queue drained on both sides."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def card_peak(device: torch.device) -> tuple[float | None, str]:
    """The card's dense bf16 peak from the vendors' sheets, and where it came from."""
    if device.type != "cuda":
        return None, "no card"
    name = torch.cuda.get_device_name(device)
    return next(((p, f"{key} sheet") for key, p in PEAKS if key in name), (None, f"{name}: not in the table"))


def nanogpt_flops_per_token(n_params: int, cfg) -> float:
    """nanoGPT's `estimate_mfu`: 6N + 12·L·H·Q·T, N without the position table."""
    return 6 * n_params + 12 * cfg.n_layers * cfg.n_heads * (cfg.d_model // cfg.n_heads) * cfg.context


# ---- part 1: mha at GPT-2 small, beside nanoGPT


def part_gpt2(s: dict, args, device: torch.device, record: Record) -> None:
    peak, source = card_peak(device)
    measured = bench.matmul_peak(device)
    record("matmul_peak_flops_per_s", measured)
    peak, source = (peak, source) if peak else (measured, "measured matmul peak")
    record("peak_flops_per_s", peak)
    record("peak_source", source)
    train = TrainConfig(batch_size=s["batch"], compile=device.type == "cuda", device=str(device))
    row = bench.measure("mha", build_model(s["model"], device="meta").cfg, train, s["steps"], s["warmup"])
    model = build_model(s["model"], device="meta")
    n = model.n_params() - (model.pos_embed.weight.numel() if model.pos_embed is not None else 0)
    per_token = nanogpt_flops_per_token(n, model.cfg)
    record("ablate", _speed(row["tokens_per_s"], per_token, peak) | {"warmup_s": row["warmup_s"], "batch": s["batch"]})
    if args.nanogpt is None:
        record("nanogpt", "not run: give a checkout of karpathy/nanoGPT with --nanogpt DIR")
        return
    theirs = nanogpt(args.nanogpt, s, device)
    record("nanogpt", _speed(theirs["tokens_per_s"], per_token, peak) | theirs)
    record("ablate_over_nanogpt", row["tokens_per_s"] / theirs["tokens_per_s"])


def _speed(tokens_per_s: float, flops_per_token: float, peak: float) -> dict:
    return {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s * flops_per_token / peak}


ITER_LINE = re.compile(r"^iter (\d+): loss [\d.naif]+, time ([\d.]+)ms")


def nanogpt(checkout: Path, s: dict, device: torch.device) -> dict:
    """nanoGPT's train.py at GPT-2 small with bench.py's settings (random tokens, no dropout, no
    biases, bf16, compiled on a card), one micro-step per iteration, in its own process: tokens/s
    over the iterations after `warmup`, from the times it prints."""
    m, iters = s["model"], s["warmup"] + s["steps"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "random"
        data.mkdir()
        rng = np.random.default_rng(0)
        for split in ("train", "val"):
            rng.integers(0, m["vocab_size"], size=1 << 21, dtype=np.uint16).tofile(data / f"{split}.bin")
        (data / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": m["vocab_size"]}))  # train.py's vocabulary
        on_card = device.type == "cuda"
        settings = {
            "dataset": str(data), "out_dir": str(Path(tmp) / "out"), "batch_size": s["batch"],
            "block_size": m["context"], "n_layer": m["n_layers"], "n_head": m["n_heads"], "n_embd": m["d_model"],
            "gradient_accumulation_steps": 1, "max_iters": iters, "eval_interval": iters + 1, "eval_iters": 1,
            "log_interval": 1, "always_save_checkpoint": False, "dropout": 0.0, "bias": False,
            "device": str(device), "dtype": "bfloat16" if on_card else "float32", "compile": on_card,
        }  # fmt: skip
        argv = [sys.executable, "train.py", *(f"--{k}={v}" for k, v in settings.items())]
        start = time.perf_counter()
        done = subprocess.run(argv, check=False, cwd=checkout, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"nanoGPT's train.py failed: {done.stderr.strip().splitlines()[-1:]}")
    times = {int(m[1]): float(m[2]) / 1000 for m in map(ITER_LINE.match, done.stdout.splitlines()) if m}
    timed_iters = [t for i, t in times.items() if i > s["warmup"]]
    if not timed_iters:
        raise RuntimeError("nanoGPT's train.py printed no iteration times")
    seconds = sum(timed_iters) / len(timed_iters)
    warmup = sum(t for i, t in times.items() if i <= s["warmup"])
    return {"tokens_per_s": s["batch"] * m["context"] / seconds, "warmup_s": warmup, "wall_s": wall}


# ---- part 2: the Strawberry recipe


def part_recipe(s: dict, args, device: torch.device, record: Record) -> None:
    ((name, model, train),) = bench.targets(
        ROOT / "studies/strawberry_seed.yaml", [s["variant"]], {}, {"device": str(device)}
    )
    if s["recipe_steps"] is not None:  # the dry run's short recipe
        short = {"steps": s["recipe_steps"], "eval_every": s["recipe_steps"] // 2, "eval_batches": 2, "batch_size": 4}
        train = train.model_copy(update=short)
    row = bench.measure(name, model, train, s["steps"], s["warmup"])
    record("shape", {"variant": name, "n_params": row["n_params"], "batch": train.batch_size, "context": model.context})
    record("tokens_per_s", row["tokens_per_s"])
    record(
        "recipe",
        {
            "steps": train.steps,
            "eval_every": train.eval_every,
            "tokens": train.steps * train.batch_size * model.context,
        },
    )
    one = at_once(recipe, [(model, train, 0)])
    record("one_trial", one)
    record("packed", at_once(recipe, [(model, train, seed) for seed in range(s["seeds"])]))


def recipe(model, train: TrainConfig, seed: int) -> float:
    """The whole recipe for one seed, the Trainer's steps and evals on random tokens: seconds."""
    seed_everything(seed)
    built = build_model(model)
    corpus = bench._random_tokens(model.vocab_size, model.context, train.batch_size, train.eval_batches)
    trainer = Trainer(built, corpus, train, seed=seed)
    start = time.perf_counter()
    trainer.fit()
    synchronize(trainer.device)
    return time.perf_counter() - start


def at_once(fn, argses: list[tuple]) -> dict:
    """fn(*args) for each args, each in its own process, all at once (sharing the card): the wall
    time from starting them to the last one done, and each one's own seconds. On a CPU they
    share its cores, split evenly."""
    start, threads = time.perf_counter(), max(1, torch.get_num_threads() // len(argses))
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(argses), spawn, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        own = list(pool.map(fn, *zip(*argses)))
    return {"processes": len(argses), "wall_s": time.perf_counter() - start, "each_s": own}


# ---- part 3: the recurrent mixers alone, fla against torch against mha


def part_mixers(s: dict, args, device: torch.device, record: Record) -> None:
    fla = device.type == "cuda" and fla_installed()
    record("fla", metadata_version("fla-core") if fla else "not measured: no CUDA or fla not installed")
    for T in s["contexts"]:
        record(f"mha@{T}", mixer_speed("mha", {}, T, s, device))
        for name in RECURRENT:
            for kernel in ("torch", "fla") if fla else ("torch",):
                record(f"{name}/{kernel}@{T}", mixer_speed(name, {"kernel": kernel}, T, s, device))
    against = "fla" if fla else "torch"  # the dry run compares the torch form with itself: the code runs
    for name in RECURRENT:
        record(f"{name}/{against}-vs-torch", against_torch(name, against, s, device))


def mixer_shape(s: dict, context: int) -> dict:
    return {"d_model": s["d_model"], "n_heads": s["n_heads"], "qkv_dim": s["d_model"], "context": context}


def mixer_speed(name: str, options: dict, T: int, s: dict, device: torch.device) -> dict:
    """One mixer layer, forward and backward under the trainer's autocast, batch × T = s["tokens"]:
    tokens/s after two untimed calls (compiling, autotuning), whose time is reported apart."""
    batch = max(1, s["tokens"] // T)
    try:
        model = build_model(
            {**mixer_shape(s, T), "mixer": name, "mixer_options": options, "n_layers": 1}, device=device
        )
        mixer = model.blocks[0].mixer
        x = torch.randn(batch, T, s["d_model"], device=device, requires_grad=True)
        dy = torch.randn(batch, T, s["d_model"], device=device)

        def call():
            with autocast(device):
                y = mixer(x)
            y.backward(dy.to(y.dtype))

        warmup = timed(device, call, 2) * 2
        seconds = timed(device, call, s["repeats"])
    except RuntimeError as e:  # out of memory, or a kernel fla refuses on this card: the part goes on
        return {"batch": batch, "error": f"{type(e).__name__}: {first_line(e)}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"batch": batch, "tokens_per_s": batch * T / seconds, "warmup_s": warmup}


def against_torch(name: str, kernel: str, s: dict, device: torch.device) -> dict:
    """The same weights through a 2-layer model under the trainer's autocast (bf16 on a card),
    `kernel` against kernel torch: the largest logit difference over the largest logit, and fla's
    error ratio (RMS of the difference over RMS of torch's) of the logits and of the worst
    parameter gradient."""
    x = torch.randint(0, 8192, (1, s["diff_context"]), device=device)
    try:
        (ours, our_grads), (theirs, their_grads) = (logits_and_grads(name, k, s, x) for k in ("torch", kernel))
    except RuntimeError as e:
        return {"error": f"{type(e).__name__}: {first_line(e)}"}
    return {
        "logit_max_diff_rel": ((ours - theirs).abs().max() / ours.abs().max()).item(),
        "logit_error_ratio": error_ratio(theirs, ours),
        "worst_grad_error_ratio": max(error_ratio(their_grads[n], our_grads[n]) for n in our_grads),
    }


def logits_and_grads(name: str, kernel: str, s: dict, x: torch.Tensor) -> tuple:
    """A 2-layer model's logits for x, and its parameters' gradients, from seed 0's weights."""
    torch.manual_seed(0)
    cfg = {**mixer_shape(s, x.size(1)), "mixer": name, "mixer_options": {"kernel": kernel}, "n_layers": 2}
    net = build_model(cfg, device=x.device)
    with autocast(x.device):
        logits = net(x)
    logits.float().square().mean().backward()
    return logits.detach().float(), {n: p.grad.float() for n, p in net.named_parameters()}


def metadata_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


# ---- part 4: decoding from state


@torch.no_grad()
def part_decode(s: dict, args, device: torch.device, record: Record) -> None:
    longest = max(s["contexts"])
    for name in DECODERS:
        shape = {"mixer": name, "d_model": s["d_model"], "n_heads": s["n_heads"], "qkv_dim": s["d_model"]}
        model = build_model({**shape, "n_layers": s["n_layers"], "context": longest}, device=device).eval()
        if device.type == "cuda":
            model = model.to(torch.bfloat16)
        for batch in s["batches"]:
            try:
                states, stopped = cost.prefilled(model, batch, list(s["contexts"]), s["steps"])
                timed_steps = cost.decode_seconds(model, batch, states, s["steps"])
            except RuntimeError as e:  # the part goes on with the next
                record(f"{name}/batch {batch}", {"error": f"{type(e).__name__}: {first_line(e)}"})
                continue
            finally:
                states = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            ms = {n: 1000 * seconds for n, (seconds, _) in timed_steps.items()}
            record(f"{name}/batch {batch}", {"ms_per_token": ms, "stopped": stopped})


# ---- part 5: packing


def part_packing(s: dict, args, device: torch.device, record: Record) -> None:
    ((name, model, train),) = bench.targets(ROOT / "benchmarks/packing.yaml", ["mha"], {}, {"device": str(device)})
    per_trial = train.steps * train.batch_size * model.context
    record("trial", {"variant": name, "steps": train.steps, "tokens": per_trial})
    for copies in s["copies"]:
        row = bench.measure_parallel(name, model, train, s["steps"], s["warmup"], copies)
        record(
            f"{copies} at once", {"tokens_per_s": row["tokens_per_s"], "trials_per_s": row["tokens_per_s"] / per_trial}
        )


PARTS = {1: part_gpt2, 2: part_recipe, 3: part_mixers, 4: part_decode, 5: part_packing}
TITLES = {
    1: "mha at GPT-2 small against nanoGPT",
    2: "The Strawberry recipe",
    3: "Recurrent mixers: fla, torch, mha",
    4: "Decoding from state",
    5: "Packing",
}


# ---- the driver


def machine(device: torch.device) -> dict:
    peak, source = card_peak(device)
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU)",
        "bf16_peak_flops_per_s": peak,
        "peak_source": source,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": metadata_version("triton"),
        "fla": metadata_version("fla-core"),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def run_part(n: int, args, limit: float) -> dict:
    """Part n in its own process group under its time limit; what it recorded, and how it ended."""
    argv = [sys.executable, __file__, str(args.out), "--part", str(n)]
    argv += ["--dry-run"] * args.dry_run + (["--nanogpt", str(args.nanogpt)] if args.nanogpt else [])
    log = args.out / f"part-{n}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = "done" if child.wait(timeout=limit) == 0 else f"failed: {_last_line(log)}"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # its copies and compilers with it
            child.wait()
            status = f"cut off at its limit of {limit:g} s"
    figures = args.out / f"part-{n}.json"
    recorded = json.loads(figures.read_text()) if figures.exists() else {}
    return {"title": TITLES[n], "status": status, "seconds": time.perf_counter() - start, "figures": recorded}


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


FLA_TOLERANCE = 0.005  # fla's own tests' error ratio between two kernels in half precision


def targets(parts: dict) -> list[tuple[str, float | None, bool | None]]:
    """The issue's targets beside what the parts measured: (target, figure, met); None where the
    figure is missing (a part not run, cut off, or without fla)."""

    def figure(part: int, *keys):
        value = parts.get(part, {}).get("figures", {})
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value if isinstance(value, (int, float)) else None

    def ratio(name: str) -> float | None:
        T = SHAPES["full"][3]["contexts"][-1]
        fla, torch_ = figure(3, f"{name}/fla@{T}", "tokens_per_s"), figure(3, f"{name}/torch@{T}", "tokens_per_s")
        return fla / torch_ if fla and torch_ else None

    errors = [
        figure(3, f"{m}/fla-vs-torch", k) for m in RECURRENT for k in ("logit_error_ratio", "worst_grad_error_ratio")
    ]
    rows = [
        ("mha at GPT-2 small: MFU ≥ 0.40 (on an H100)", figure(1, "ablate", "mfu"), lambda v: v >= 0.40),
        ("mha at GPT-2 small: ≥ 1.0× nanoGPT's train.py", figure(1, "ablate_over_nanogpt"), lambda v: v >= 1.0),
        ("the Strawberry recipe, one trial: < 60 s", figure(2, "one_trial", "wall_s"), lambda v: v < 60),
        ("its 5 seeds packed on the card: < 120 s", figure(2, "packed", "wall_s"), lambda v: v < 120),
        ("gla at 16k: fla ≥ 3× torch", ratio("gla"), lambda v: v >= 3),
        ("gated-deltanet at 16k: fla ≥ 3× torch", ratio("gated-deltanet"), lambda v: v >= 3),
        (
            f"fla against torch in bf16, worst error ratio ≤ {FLA_TOLERANCE} (fla's tolerance)",
            max(errors) if errors and None not in errors else None,
            lambda v: v <= FLA_TOLERANCE,
        ),
    ]
    return [(what, value, None if value is None else test(value)) for what, value, test in rows]


def markdown(suite: dict) -> str:
    m = suite["machine"]
    lines = [f"# ablate's GPU suite, {m['date']}", ""]
    lines += [f"- {k}: {v}" for k, v in m.items() if k != "date"]
    lines += ["", "## Targets", "", "| target | measured | |", "| --- | ---: | --- |"]
    for what, value, met in targets(suite["parts"]):
        verdict = "not measured" if met is None else "met" if met else "not met"
        verdict = "none: a dry run" if suite["dry_run"] else verdict
        lines.append(f"| {what} | {'—' if value is None else _cell(float(value))} | {verdict} |")
    for n, part in suite["parts"].items():
        lines += ["", f"## {n}. {part['title']}", "", f"{part['status']}, in {part['seconds']:.0f} s", ""]
        lines += ["| what | figures |", "| --- | --- |"]
        lines += [f"| {key} | {_cell(value)} |" for key, value in part["figures"].items()]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder for gpu_suite.json, gpu_suite.md and the parts' logs")
    parser.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT, for part 1's comparison")
    parser.add_argument("--parts", type=int, nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
    parser.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS", help="a part's time limit")
    parser.add_argument("--dry-run", action="store_true", help="every part at tiny shapes on the CPU (kernel torch)")
    parser.add_argument("--part", type=int, choices=sorted(PARTS), help=argparse.SUPPRESS)  # a child's one part
    args = parser.parse_args()
    if args.nanogpt is not None and not (args.nanogpt / "train.py").is_file():
        sys.exit(f"gpu_suite: --nanogpt {args.nanogpt}: no train.py there (a checkout of karpathy/nanoGPT)")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if args.part is not None:
        if args.dry_run:
            torch.set_num_threads(min(2, torch.get_num_threads()))
        shape = SHAPES["dry" if args.dry_run else "full"][args.part]
        PARTS[args.part](shape, args, device, Record(args.out / f"part-{args.part}.json"))
        return
    limits = {**LIMITS} if not args.dry_run else dict.fromkeys(PARTS, DRY_LIMIT)
    for given in args.limit:
        part, _, seconds = given.partition("=")
        limits[int(part)] = float(seconds)
    suite = {"machine": machine(device), "dry_run": args.dry_run, "parts": {}}
    for n in args.parts:
        suite["parts"][n] = run_part(n, args, limits[n])
        print(
            f"part {n} ({TITLES[n]}): {suite['parts'][n]['status']}, {suite['parts'][n]['seconds']:.0f} s", flush=True
        )
        (args.out / "gpu_suite.json").write_text(json.dumps(suite, indent=1))
        (args.out / "gpu_suite.md").write_text(markdown(suite))
    sys.exit(0 if all(p["status"] == "done" for p in suite["parts"].values()) else 1)


if __name__ == "__main__":
    main()

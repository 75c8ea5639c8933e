"""Sampling from state against recomputing, at Strawberry's shape (context 256, d_model 96, 6
heads, 5 layers, vocabulary 8,192), one fresh model per mixer, batch 1, greedy.

Each mixer generates the same tokens both ways: `ablate.inference.sample.generate` decoding from the
model's state (the prompt in one prefill, then one step per token) and with `recompute`, a
forward over the last `context` tokens per token. A prompt of 8 tokens and 248 new tokens fill
the context, so the recomputed forwards run over 8 … 255 tokens. The two alternate
(state, recompute, recompute, state, ...) so that drifts of the machine fall on both. Prints ms
per token for each over the whole generation and the speed-up, checks that both drew the same
tokens, and then the cost of one token at context 256: the median of 50 forwards over 255
tokens against the median of 50 steps from the state after them.

    python benchmarks/decode_speedup.py [--mixers mha gla ...] [--runs 2]
"""

import argparse
import statistics
import time

import torch

from ablate.inference import sample
from ablate.model import build_model

SEED_SHAPE = {"vocab_size": 8192, "context": 256, "d_model": 96, "n_layers": 5, "n_heads": 6, "qkv_dim": 96}
MIXERS = ("mha", "aft-simple", "retention", "retnet", "hybrid", "hybrid-heads", "gla", "mamba2")
PROMPT = [1, 2, 3, 4, 5, 6, 7, 8]


def seconds(model, n: int, recompute: bool) -> tuple[float, list[int]]:
    start = time.perf_counter()
    tokens = sample.generate(model, PROMPT, n, 0.0, None, 0, recompute)
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixers", nargs="+", default=MIXERS)
    parser.add_argument("--runs", type=int, default=2, help="runs of each path (alternating)")
    args = parser.parse_args()
    n = SEED_SHAPE["context"] - len(PROMPT)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n} tokens after a prompt of {len(PROMPT)}")
    print(
        f"{'mixer':<14}{'state ms/token':>16}{'recompute ms/token':>20}{'speed-up':>10}  same tokens"
        f"{'step @256':>12}{'forward @256':>15}{'ratio':>10}"
    )
    for mixer in args.mixers:
        torch.manual_seed(0)
        model = build_model({**SEED_SHAPE, "mixer": mixer}).eval()
        times = {False: [], True: []}
        drawn = {}
        for run in range(args.runs):
            for recompute in (False, True) if run % 2 == 0 else (True, False):
                took, drawn[recompute] = seconds(model, n, recompute)
                times[recompute].append(took)
        state, recomputed = (1000 * statistics.median(times[r]) / n for r in (False, True))
        same = "yes" if drawn[False] == drawn[True] else "NO"
        step, forward = at_full_context(model)
        print(
            f"{mixer:<14}{state:>16.2f}{recomputed:>20.2f}{recomputed / state:>9.1f}×  {same:<11}"
            f"{step:>12.2f}{forward:>15.2f}{forward / step:>9.1f}×"
        )


@torch.inference_mode()
def at_full_context(model, repeats: int = 50) -> tuple[float, float]:
    """ms of one decoding step at position 255, and of one forward over 255 tokens (medians)."""
    idx = torch.randint(0, model.cfg.vocab_size, (1, model.cfg.context))
    window, token = idx[:, :-1], idx[:, -1:]
    _, decoding = model.prefill(window)
    steps, forwards = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model.step(token, decoding)
        steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        model(window)
        forwards.append(time.perf_counter() - start)
    return 1000 * statistics.median(steps), 1000 * statistics.median(forwards)


if __name__ == "__main__":
    main()

"""What a model costs to run: prefill speed, the time per decoded token and the bytes of its
state at several contexts, on the device it sits on.

Decoding runs from the model's state (`LanguageModel.prefill` and `step`). The time per token at
context L is timed on the steps that end at position L, after a prefill of the positions before
them. Speed does not depend on the text, so the tokens are random; a trained model and a fresh
one of the same shape cost the same.
"""

import statistics
import time
from typing import Any

import torch

from ablate.core.errors import AblateError
from ablate.core.schema import Metric
from ablate.model import LanguageModel
from ablate.nn.devices import synchronize

DEFAULT_CONTEXTS = (256, 1024, 4096, 16384)
DEFAULT_STEPS = 32  # timed decoding steps per context
WARMUP_STEPS = 2
THROUGHPUT_BATCH = 16
TURN = 4  # decoding steps a context takes in a row


def _timed(device: torch.device, fn):
    """fn()'s result and the seconds it took, the device's queue drained on both sides."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def _tokens(model: LanguageModel, batch: int, length: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, model.cfg.vocab_size, (batch, length), device=device)


def prefilled(model: LanguageModel, batch: int, contexts: list[int], steps: int) -> tuple[dict[int, Any], str | None]:
    """Per context, in increasing order, the state after a prefill of the positions before its
    timed steps; and why the contexts stop before the rest (None: they all run): a learned
    table ends, or the device's memory does not hold a state that long."""
    device, limit, states = model.head_weight.device, model.decode_limit(), {}
    for n in contexts:
        if limit is not None and n > limit[0]:
            return states, f"at {n}: {limit[1]} ends at position {limit[0]}"
        try:
            states[n] = model.prefill(_tokens(model, batch, n - steps - WARMUP_STEPS, device))[1]
        except (RuntimeError, MemoryError) as e:
            if not _out_of_memory(e):
                raise
            return states, f"at {n}: out of memory on {device}"
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return states, None


def decode_seconds(
    model: LanguageModel, batch: int, states: dict[int, Any], steps: int
) -> dict[int, tuple[float, int]]:
    """Per context: the median seconds of a decoding step from its prefilled state (ending near
    that position), and the numbers per sequence the state then holds. The contexts take turns
    of TURN steps, so that the machine's slow and fast moments fall on every context alike (and
    the median passes over the first step of a turn, which finds the caches holding another
    context's state)."""
    device = model.head_weight.device
    token, times = _tokens(model, batch, 1, device), {n: [] for n in states}
    for turn in range(-(-(WARMUP_STEPS + steps) // TURN)):
        for n in list(states):
            for i in range(turn * TURN, min((turn + 1) * TURN, WARMUP_STEPS + steps)):
                (_, states[n]), seconds = _timed(device, lambda: model.step(token, states[n]))  # noqa: B023
                if i >= WARMUP_STEPS:
                    times[n].append(seconds)
    return {n: (statistics.median(times[n]), states[n].numbers()) for n in states}


def _out_of_memory(e: Exception) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "memory" in str(e).lower()


@torch.no_grad()
def measure(
    model: LanguageModel, contexts: tuple[int, ...] = DEFAULT_CONTEXTS, steps: int = DEFAULT_STEPS
) -> dict[str, Any]:
    """One row: prefill tokens/s over a sequence of the training context; per context, the
    batch-1 milliseconds per decoded token and the state's bytes per sequence; decode tokens/s at
    a batch of THROUGHPUT_BATCH at the training context; and where the contexts stopped (a
    learned table's end, memory), None when they all ran."""
    if model.cannot_decode:
        raise AblateError(f"{model.cfg.mixer} cannot decode from a state: {model.cannot_decode}")
    model.eval()
    device, context = model.head_weight.device, model.cfg.context
    steps = min(steps, min(context, *contexts) - WARMUP_STEPS - 1)  # the timed steps fit before each context
    prompt = _tokens(model, 1, context, device)
    model.prefill(prompt)  # warm-up
    _, seconds = _timed(device, lambda: model.prefill(prompt))
    row: dict[str, Any] = {"prefill_tokens_per_s": context / seconds}
    batched, _ = prefilled(model, THROUGHPUT_BATCH, [context], steps)
    ((batch_seconds, _),) = decode_seconds(model, THROUGHPUT_BATCH, batched, steps).values()
    row["decode_tokens_per_s"] = THROUGHPUT_BATCH / batch_seconds
    states, row["stopped"] = prefilled(model, 1, sorted(contexts), steps)
    timed = decode_seconds(model, 1, states, steps) if states else {}
    row["ms_per_token"] = {n: 1000 * seconds for n, (seconds, _) in timed.items()}
    row["state_bytes"] = {n: numbers * model.head_weight.element_size() for n, (_, numbers) in timed.items()}
    return row


def metrics(row: dict[str, Any]) -> dict[str, float]:
    """A row as MLflow metrics: decode_ms_per_token/4096, state_bytes/4096, and the two speeds."""
    out = {Metric.PREFILL_TOKENS_PER_S: row["prefill_tokens_per_s"]}
    out[Metric.DECODE_TOKENS_PER_S] = row["decode_tokens_per_s"]
    out |= {f"{Metric.DECODE_MS_PER_TOKEN}{n}": ms for n, ms in row["ms_per_token"].items()}
    out |= {f"{Metric.STATE_BYTES}{n}": float(b) for n, b in row["state_bytes"].items()}
    return out


def print_table(rows: list[dict[str, Any]], device: torch.device, console) -> None:
    """The decode rows as a table: speeds, then per context the ms per token and the state's size."""
    from rich.table import Table

    contexts = sorted({n for r in rows for n in r["ms_per_token"]})
    table = Table(title=f"decoding on {device}: ms per token at batch 1 and state bytes per sequence, by context")
    columns = ["variant", "non-emb params", "prefill tok/s", f"decode tok/s (batch {THROUGHPUT_BATCH})"]
    columns += [f"ms/token @{n}" for n in contexts] + [f"state @{n}" for n in contexts]
    for col in columns:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(
            r["variant"],
            f"{r['n_params_non_embedding']:,}",
            f"{r['prefill_tokens_per_s']:,.0f}",
            f"{r['decode_tokens_per_s']:,.0f}",
            *(f"{r['ms_per_token'][n]:.2f}" if n in r["ms_per_token"] else "-" for n in contexts),
            *(_size(r["state_bytes"][n]) if n in r["state_bytes"] else "-" for n in contexts),
        )
    console.print(table)
    for r in rows:
        if r["stopped"]:
            print(f"{r['variant']}: stopped {r['stopped']}")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def plot(rows: list[dict[str, Any]], folder, device: torch.device) -> list:
    """decode_latency.png and decode_state.png in `folder`: ms per token and state bytes against
    the context, log-log, one line per variant. Returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, name, label in (
        ("ms_per_token", "decode_latency.png", "ms per decoded token (batch 1)"),
        ("state_bytes", "decode_state.png", "state bytes per sequence"),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for i, r in enumerate(rows):
            points = sorted(r[key].items())
            colour = plt.cm.tab20.colors[i % 20]  # twenty apart
            ax.plot([n for n, _ in points], [v for _, v in points], marker="o", color=colour, label=r["variant"])
        ax.set(xscale="log", yscale="log", xlabel="context (tokens decoded so far)", ylabel=label)
        ax.set_title(f"{label} on {device}", fontsize="small")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        paths.append(folder / name)
    return paths

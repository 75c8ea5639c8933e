"""What the console shows while a study runs (a bar per trial and one for the study, with an
ETA from the pace measured so far) and the summary table when it ends."""

import datetime
from typing import TYPE_CHECKING

from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ablate.plan.study import Study
from ablate.tracking.schema import Metric

if TYPE_CHECKING:  # trial imports this module for its bars
    from ablate.run.schedule import StudyRun
    from ablate.run.workers import Stores

PROGRESS_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
    TextColumn("loss {task.fields[loss]}"),
    TextColumn("{task.fields[speed]} tok/s"),
    TimeElapsedColumn(),
    TextColumn("ETA {task.fields[eta]}"),
)


class Pace:
    """Seconds per step of the final trials finished in this process, per mixer family: what the
    ETA is estimated from once one has finished (a trial's first steps, with their compiling,
    caching and first eval, are no guide to the rest, nor one family's speed to another's)."""

    def __init__(self):
        self.measured: dict[str, tuple[float, int]] = {}  # family → (seconds, steps)

    def record(self, family: str, seconds: float, steps: int) -> None:
        if steps > 0:
            total, n = self.measured.get(family, (0.0, 0))
            self.measured[family] = (total + seconds, n + steps)

    def per_step(self, family: str) -> float | None:
        """The family's measured seconds per step; else that of all families measured; else None."""
        pooled = self.measured.values()
        total, n = self.measured.get(family) or (sum(t for t, _ in pooled), sum(n for _, n in pooled))
        return total / n if n else None

    def eta(self, family: str, remaining: int, rate_now: float | None, queued: list[tuple[str, int]]) -> float | None:
        """Seconds left: this trial's remaining steps, then every queued (family, steps), each at
        its family's measured pace, falling back to this trial's own rate so far."""
        own = self.per_step(family) or rate_now
        if own is None:
            return None
        return remaining * own + sum(steps * (self.per_step(f) or own) for f, steps in queued)


def clock(seconds: float | None) -> str:
    return "-" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


def print_summary(study: Study, run: "StudyRun", stores: "Stores", hint: str, console) -> None:
    """Every final trial in one table, what to compare its losses with, and where to look next
    (`hint`: the store flags to repeat in the commands shown)."""
    table = Table(title=f"study {study.name}")
    leaky = any(Metric.PREFIX_VAL_LOSS in o.metrics for o in run.outcomes)
    columns = ["variant", "seed", "params (non-emb)", "val_loss"] + ["prefix_val_loss"] * leaky + ["tokens/s", "status"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("variant", "status") else "right")
    for o in run.outcomes:
        m = o.metrics
        prefix = [f"{m[Metric.PREFIX_VAL_LOSS]:.4f}" if Metric.PREFIX_VAL_LOSS in m else "-"] * leaky
        table.add_row(
            o.trial.variant,
            str(o.trial.seed),
            f"{o.trial.n_params:,} ({o.trial.n_params_non_embedding:,})",
            f"{m[Metric.VAL_LOSS]:.4f}" if m else "-",
            *prefix,
            f"{m[Metric.MEAN_TOKENS_PER_S]:,.0f}" if m else "-",
            o.status.lower() + (f": {o.reason}" if o.reason else ""),
        )
    console.print(table)
    if leaky:
        console.print(
            "prefix_val_loss: leaking variants' loss with each position predicted from its own prefix alone "
            "(the honest next-token loss; val_loss is teacher-forced and sees what it must not)"
        )
    console.print(
        f"unigram entropy of the train tokens: {run.meta.unigram_entropy:.4f} nats/token "
        "(the loss of a model that ignores context; val losses should sit far below it)"
    )
    if run.meta.chance_accuracy is not None:
        console.print(
            f"chance level of val_accuracy: {run.meta.chance_accuracy:.4f} "
            "(the best guess without the capability the task tests)"
        )
    console.print(f"study wall time: {run.seconds:.0f}s")
    if run.startup_s is not None:
        built = (
            f" (building the data's tokenizer and splits took {run.data_build_s:.1f}s of it)"
            if run.data_build_s
            else ""
        )
        console.print(f"start-up: {run.startup_s:.1f}s from the command to its first training step{built}")
    local = stores.uri.startswith("sqlite")
    console.print(f"results: {stores.uri}" + (f" (artifacts under {stores.results / 'artifacts'})" if local else ""))
    console.print(f"compare: ablate compare{hint} --study {study.name} --metric val_loss")
    if study.config.expect:
        console.print(f"check:   ablate compare{hint} --study {study.name} --check  (the study's expectations)")
    console.print(f"browse:  ablate ui{hint}")

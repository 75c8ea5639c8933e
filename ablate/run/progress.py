"""What the console shows while a study runs: a bar per trial and one for the study, with an
ETA from the pace measured so far."""

import datetime

from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

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

"""`ablate status`: where a study stands, read from its work list alone, so that it answers the
same for workers started by any executor, while they run or after."""

import socket
import time
from dataclasses import dataclass

import sqlalchemy as sa

from ablate.core.errors import AblateError
from ablate.run import claims

SETUP = "setup"  # the unit that creates the stores: not work a user waits on


@dataclass
class StudyStatus:
    study: str
    counts: dict[str, int]  # state → units
    running: list[sa.Row]
    failed: list[sa.Row]
    eta_s: float | None  # the open and running units at the mean time of those done, over the running workers

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def read(storage: str, study: str | None = None) -> list[StudyStatus]:
    """Every study in the work list (or the one named), from its rows."""
    engine = sa.create_engine(storage)
    if not sa.inspect(engine).has_table(claims.TABLE.name):
        raise AblateError(f"no work list in {storage}: no study has run there (give --storage or --results)")
    table = sa.Table(claims.TABLE.name, sa.MetaData(), autoload_with=engine)  # as it is: a reader does not migrate it
    query = sa.select(table).where(table.c.unit != SETUP)
    if study is not None:
        query = query.where(table.c.study == study)
    with engine.connect() as c:
        rows = list(c.execute(query.order_by(table.c.study, table.c.unit)))
    engine.dispose()
    if not rows:
        raise AblateError(f"no study {study!r} in the work list {storage}" if study else f"no study in {storage}")
    return [_status(name, [r for r in rows if r.study == name]) for name in dict.fromkeys(r.study for r in rows)]


def _status(study: str, rows: list[sa.Row]) -> StudyStatus:
    counts = {state: 0 for state in (claims.DONE, claims.RUNNING, claims.OPEN, claims.FAILED)}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    running = [r for r in rows if r.state == claims.RUNNING]
    took = [
        r.ended - r.started
        for r in rows
        if r.state == claims.DONE and getattr(r, "started", None) and getattr(r, "ended", None)
    ]
    eta = None
    left = counts[claims.OPEN] + counts[claims.RUNNING]
    if took and left and running:
        eta = sum(took) / len(took) * left / len(running)
    failed = [r for r in rows if r.state == claims.FAILED]
    return StudyStatus(study, counts, running, failed, eta)


def show(statuses: list[StudyStatus], console) -> None:
    from rich.table import Table

    from ablate.run.progress import clock

    now = time.time()
    for s in statuses:
        parts = [f"{s.counts[state]} {state}" for state in (claims.DONE, claims.RUNNING, claims.OPEN, claims.FAILED)]
        eta = f"; about {clock(s.eta_s)} left" if s.eta_s is not None else ""
        console.print(f"[bold]{s.study}[/bold]: {s.total} units: {', '.join(parts)}{eta}")
        if s.running:
            table = Table(show_edge=False)
            for column in ("running", "host", "pid", "heartbeat", "attempt"):
                table.add_column(column)
            for r in s.running:
                host, _, pid = (r.worker or "").rpartition(":")
                beat = f"{now - r.heartbeat:.0f} s ago" + (
                    " (stale)" if now - r.heartbeat > claims.STALE_AFTER_S else ""
                )
                table.add_row(r.unit, host or socket.gethostname(), pid, beat, str(r.attempts))
            console.print(table)
        for r in s.failed:
            console.print(f"failed: {r.unit}: {r.detail or 'no reason recorded'}", soft_wrap=True)

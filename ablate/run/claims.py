"""The study's work list: one claim row per unit of work, so that any number of workers on any
number of machines train every unit exactly once.

The rows live in a table of their own (`ablate_claims`) in the Optuna storage's database, SQLite
or PostgreSQL. A claim is taken by an INSERT (the primary key lets exactly one worker win) or, for
a unit whose worker let go of it or vanished, by an UPDATE conditioned on the row still being in
that state; either way the database decides, not a read-then-write in Python. A worker beats its
heartbeat while it holds a claim; a claim whose heartbeat is older than `stale_after` (or whose
worker was a process of this host that is gone) may be taken over, and the new holder resumes the
unit from its MLflow run and checkpoint.
"""

import contextlib
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from ablate.core import processes

RUNNING, OPEN, DONE, FAILED = "running", "open", "done", "failed"
ENDED = (DONE, FAILED)
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0

META = sa.MetaData()
TABLE = sa.Table(
    "ablate_claims",
    META,
    sa.Column("study", sa.String(200), primary_key=True),
    sa.Column("unit", sa.String(200), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("worker", sa.String(200)),
    sa.Column("heartbeat", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("run_id", sa.String(64)),
    sa.Column("optuna_trial", sa.Integer),
    sa.Column("detail", sa.Text),  # a failure's reason, or what a finished setup unit made
    sa.Column("started", sa.Float),  # when its holder took it up (this attempt), for `ablate status`
    sa.Column("ended", sa.Float),
)
ADDED = ("started", "ended")  # columns a ledger written by an earlier version lacks


def has_ended(rows: dict, unit: str) -> bool:
    """Whether the unit's row (in `WorkList.rows()`) says it is done or failed."""
    return unit in rows and rows[unit].state in ENDED


@dataclass
class Claim:
    study: str
    unit: str
    worker: str
    run_id: str | None = None  # set when an earlier holder began the unit: resume it
    optuna_trial: int | None = None
    attempts: int = 1


class WorkList:
    def __init__(self, url: str, study: str, stale_after: float = STALE_AFTER_S):
        args = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine = sa.create_engine(url, **args)
        self.study, self.stale_after, self.worker = study, stale_after, processes.owner()
        retry_races(lambda: META.create_all(self.engine))  # several workers may create it at once
        retry_races(self._add_columns)

    def _add_columns(self) -> None:
        have = {c["name"] for c in sa.inspect(self.engine).get_columns(TABLE.name)}
        with self.engine.begin() as c:
            for name in ADDED:
                if name not in have:
                    c.execute(sa.text(f"ALTER TABLE {TABLE.name} ADD COLUMN {name} FLOAT"))

    def register(self, units: list[str]) -> None:
        """Enter each unit once, open (heartbeat 0), so that `ablate status` counts what nobody has taken yet."""
        existing = self.rows()
        rows = [
            {"study": self.study, "unit": u, "state": OPEN, "heartbeat": 0.0, "attempts": 0}
            for u in units
            if u not in existing
        ]
        if not rows:
            return
        try:
            with self.engine.begin() as c:
                c.execute(TABLE.insert(), rows)
        except sa.exc.IntegrityError:  # another worker entered (or took) some first: the rest one by one
            for row in rows:
                with contextlib.suppress(sa.exc.IntegrityError), self.engine.begin() as c:
                    c.execute(TABLE.insert().values(**row))

    def rows(self) -> dict[str, sa.Row]:
        with self.engine.connect() as c:
            return {r.unit: r for r in c.execute(sa.select(TABLE).where(TABLE.c.study == self.study))}

    def claim(self, unit: str) -> Claim | None:
        """Take the unit if nobody holds it; None if another live worker does or it has ended."""
        now = time.time()
        try:
            with self.engine.begin() as c:
                c.execute(
                    TABLE.insert().values(
                        study=self.study,
                        unit=unit,
                        state=RUNNING,
                        worker=self.worker,
                        heartbeat=now,
                        attempts=1,
                        started=now,
                    )
                )
            return Claim(self.study, unit, self.worker)
        except sa.exc.IntegrityError:
            pass
        row = self.rows().get(unit)
        if row is None or row.state in ENDED:
            return None
        takeable = row.state == OPEN or row.heartbeat < now - self.stale_after or processes.gone(row.worker)
        if not takeable:
            return None
        with self.engine.begin() as c:  # only if nobody changed the row since it was read
            taken = c.execute(
                TABLE.update()
                .where(self._row(unit), TABLE.c.state == row.state, TABLE.c.worker.is_not_distinct_from(row.worker))
                .where(TABLE.c.heartbeat == row.heartbeat)
                .values(state=RUNNING, worker=self.worker, heartbeat=now, attempts=row.attempts + 1, started=now)
            ).rowcount
        if taken != 1:
            return None
        return Claim(self.study, unit, self.worker, row.run_id, row.optuna_trial, row.attempts + 1)

    def _row(self, unit: str):
        return sa.and_(TABLE.c.study == self.study, TABLE.c.unit == unit)

    def _update_if_held(self, claim: Claim, **values) -> bool:
        """Update the claim's row while this worker holds it; False when another has taken it over."""
        with self.engine.begin() as c:
            return (
                c.execute(
                    TABLE.update()
                    .where(self._row(claim.unit), TABLE.c.worker == claim.worker, TABLE.c.state == RUNNING)
                    .values(**values)
                ).rowcount
                == 1
            )

    def release(self, unit: str) -> None:
        """Open the unit again if this worker holds it: stopped while taking it up, it may hold a
        claim it has not seen yet."""
        with self.engine.begin() as c:
            c.execute(
                TABLE.update()
                .where(self._row(unit), TABLE.c.worker == self.worker, TABLE.c.state == RUNNING)
                .values(state=OPEN, worker=None)
            )

    def hand_back_gone(self, wait_s: float = 10.0) -> list[str]:
        """After its workers were stopped (an engine may kill them before they let go): wait up to
        wait_s for those of this host to end, then open again every unit a gone process of this
        host still holds. The run ids those units had, to be ended KILLED."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not any(r.state == RUNNING and processes.alive_here(r.worker) for r in self.rows().values()):
                break
            time.sleep(0.2)
        handed = []
        for row in self.rows().values():
            if row.state == RUNNING and processes.gone(row.worker):
                with self.engine.begin() as c:
                    opened = c.execute(
                        TABLE.update()
                        .where(self._row(row.unit), TABLE.c.state == RUNNING, TABLE.c.worker == row.worker)
                        .values(state=OPEN, worker=None, ended=time.time())
                    ).rowcount
                if opened and row.run_id:
                    handed.append(row.run_id)
        return handed

    def beat(self, claim: Claim) -> bool:
        """Renew the heartbeat; False when the claim was taken over (this worker must stop)."""
        return self._update_if_held(claim, heartbeat=time.time())

    def note(self, claim: Claim, **values) -> None:
        """Record run_id / optuna_trial on the claim, for whoever resumes the unit."""
        self._update_if_held(claim, **values)

    def end(self, claim: Claim, state: str, detail: str | None = None) -> None:
        """done, failed (with the reason), or open: let go of it (Ctrl-C), to be resumed by anyone."""
        worker = None if state == OPEN else claim.worker
        self._update_if_held(claim, state=state, detail=detail, worker=worker, ended=time.time())


class Heartbeat:
    """Beats the claim (and the Optuna trial's heartbeat, when one is given) from a thread, every
    HEARTBEAT_S seconds; `lost` turns true when another worker has taken the claim over."""

    def __init__(self, work: WorkList, claim: Claim, also=None, interval: float = HEARTBEAT_S):
        self.work, self.claim, self.also, self.interval = work, claim, also, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.lost = not self.work.beat(self.claim)
                if self.also is not None:
                    self.also()
            except sa.exc.OperationalError:
                continue  # the database was busy or unreachable for a moment: try again next beat

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def retry_races(fn, tries: int = 8, wait_s: float = 0.25):
    """Run fn, retrying the races of several processes creating the same tables at once."""
    for attempt in range(tries):
        try:
            return fn()
        except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
            if attempt == tries - 1:
                raise
            time.sleep(wait_s * (attempt + 1))

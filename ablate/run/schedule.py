"""Work through a planned study: prepare it once, then let one or more workers draw units (search
trials, then final trials) from the study's work list until every unit has ended."""

import contextlib
import time
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.progress import Progress

from ablate.core import errors
from ablate.core.schema import Metric, Tag
from ablate.data.meta import DataMeta
from ablate.plan.study import Study, Trial
from ablate.run import claims
from ablate.run.executors.base import Executor, Resources
from ablate.run.prepare import POLL_S, PreparedStudy, prepare
from ablate.run.progress import PROGRESS_COLUMNS
from ablate.run.trial import Outcome, Status, TrialRunner
from ablate.run.workers import Stores, WorkerSpec
from ablate.train.distributed import ALONE, Group


@dataclass
class Unit:
    """One claimable piece of work: a search trial slot of a variant, or one final trial."""

    name: str
    variant: str
    trial: Trial | None = None  # final units: the trial as planned (before the search's best setting)
    index: int = 0  # final units: position in the study's trials, for the "trial i/N" label
    slot: int = 0  # search units: which of the variant's search trials


def units(study: Study) -> list[Unit]:
    """Search slots first (a variant's final trials wait for its search), then the final trials."""
    out = [
        Unit(f"search/{variant}/{slot}", variant, slot=slot)
        for variant, cfg in study.searches.items()
        for slot in range(cfg.trials)
    ]
    for i, trial in enumerate(study.trials, 1):
        key = trial.key(study.config.data)
        out.append(Unit(f"final/{trial.variant}/seed{trial.seed}/{key}", trial.variant, trial, i))
    return out


@dataclass(frozen=True)
class Launch:
    """Workers to start for a study: how many, with what, through which executor."""

    executor: Executor
    spec: WorkerSpec
    workers: int
    resources: Resources


@dataclass
class StudyRun:
    """How a study's run ended: every final trial's outcome, as the store has it."""

    outcomes: list[Outcome]
    meta: DataMeta
    seconds: float
    interrupted: KeyboardInterrupt | None = None  # Ctrl-C, or SIGTERM (errors.Terminated)
    startup_s: float | None = None  # from the command's start to its first training step, in this process
    detached: bool = False  # the workers were submitted and left to run
    data_build_s: float = 0.0  # of it, building the data (tokenizer and splits) where it was not cached


def run_study(
    study: Study,
    stores: Stores,
    console: Console,
    launch: Launch | None = None,
    since: float | None = None,
) -> StudyRun:
    """Set the study up, then work through it in this process (no `launch`) or in the workers an
    executor starts; end its parent runs as it ended. Ctrl-C or SIGTERM ends it as interrupted
    (the trials in flight KILLED, their claims handed back). `since`: when the command started
    (perf_counter), for the start-up time."""
    start = since or time.perf_counter()
    if launch is not None:
        launch.executor.check_stores(stores)  # before anything is written
    prepared = prepare(study, stores, console)
    problems: list[str] = []
    try:
        if launch is None:
            work(prepared, console)
        else:
            prepared.tracking.result()  # the store set up here, before the workers wait on it
            prepared.work.register([u.name for u in units(study)])  # counted by `ablate status` at once
            if n := _workers_needed(prepared, launch.workers, console):
                problems = launch.executor.run(launch.spec, n, launch.resources, console)
                if launch.executor.detached:  # its parent runs end when a rerun finds every unit ended
                    return StudyRun([], prepared.data.meta, time.perf_counter() - start, detached=True)
    except KeyboardInterrupt as stop:
        if launch is not None:  # workers an engine killed before they let go of their units
            for run_id in prepared.work.hand_back_gone():
                prepared.tracker.set_status(run_id, Status.KILLED.value)
        _end_parents(prepared, Status.KILLED)
        return StudyRun(
            store_outcomes(prepared), prepared.data.meta, time.perf_counter() - start, stop, **_startup(prepared, start)
        )
    except BaseException as e:
        with contextlib.suppress(Exception):  # a broken store cannot take it; the error itself is reported
            _end_parents(prepared, Status.FAILED, errors.said(e))
        raise
    outcomes = store_outcomes(prepared)
    log_aggregates(prepared, outcomes)
    left = [o for o in outcomes if o.status in (Status.PENDING, Status.KILLED)]
    _end_parents(prepared, Status.KILLED if left else Status.FINISHED)
    _judge(problems, left, console)
    return StudyRun(outcomes, prepared.data.meta, time.perf_counter() - start, **_startup(prepared, start))


def _workers_needed(prepared: PreparedStudy, asked: int, console) -> int:
    """As many workers as asked, but no more than the units not yet ended: none for a study whose
    every unit has ended (a submitted job would only find nothing to do)."""
    rows = prepared.work.rows()
    left = sum(1 for u in units(prepared.study) if not claims.has_ended(rows, u.name))
    if left < asked:
        console.print(f"workers: {left} units left, so {left} of the {asked} workers asked for are started")
    return min(asked, left)


def _judge(problems: list[str], left: list[Outcome], console) -> None:
    """The work list decides whether workers that ended badly (a crash, a cancelled job) matter:
    not when the other workers finished their units, an error when units are left."""
    if problems and left:
        raise errors.AblateError(
            f"{len(problems)} workers ended badly ({problems[0]}) and {len(left)} trials are left; rerun to resume"
        )
    for problem in problems:
        console.print(f"warning: {problem}; the other workers finished its units")


def _startup(prepared: PreparedStudy, start: float) -> dict[str, float | None]:
    """How long the command took to its first training step, and the data's build within it."""
    built = prepared.data.meta.build_s if getattr(prepared.data, "built", False) else 0.0
    startup = prepared.first_step_at - start if prepared.first_step_at is not None else None
    return {"startup_s": startup, "data_build_s": built}


def log_aggregates(prepared: PreparedStudy, outcomes: list[Outcome]) -> None:
    """On each variant's parent run, each final metric over its finished seeds: the mean (under
    the metric's own name, so the UI's grouped rows show it), the 95% interval and n_seeds."""
    from ablate.compare.stats import describe

    for variant in prepared.study.config.variants:
        finished = [o.metrics for o in outcomes if o.trial.variant == variant.name and o.status == Status.FINISHED]
        if not finished:
            continue
        values = {Metric.N_SEEDS: len(finished)}
        for name in set.intersection(*(set(m) for m in finished)):
            got = describe(np.array([m[name] for m in finished], dtype=float))
            values |= {
                name: got["mean"],
                name + Metric.CI95_LOW: got["ci95_low"],
                name + Metric.CI95_HIGH: got["ci95_high"],
            }
        prepared.tracker.log_final(prepared.parents[variant.name], {k: v for k, v in values.items() if np.isfinite(v)})


def _end_parents(prepared: PreparedStudy, status: Status, reason: str = "") -> None:
    for run_id in prepared.parents.values():
        if reason:
            prepared.tracker.tag(run_id, {Tag.FAILURE: reason})
        prepared.tracker.set_status(run_id, status.value)


def work(prepared: PreparedStudy, console, live: bool = True, group: Group = ALONE) -> list[Outcome]:
    """Claim and run units until every unit of the study has ended (some may be done by other
    workers meanwhile); a variant's final trials become claimable once its search has ended.
    `group`: the ranks that train each trial beside this worker, which leads them."""
    todo = units(prepared.study)
    prepared.work.register([u.name for u in todo])
    finals = [u for u in todo if u.trial is not None]
    rows = prepared.work.rows()
    ended = sum(1 for u in finals if claims.has_ended(rows, u.name))
    # one redraw a second is enough for trials of minutes, and leaves the CPU to training
    with Progress(*PROGRESS_COLUMNS, console=console, disable=not live, refresh_per_second=1) as progress:
        runner = TrialRunner(prepared, progress, group=group)
        for variant, cfg in prepared.study.searches.items():
            slots = [u.name for u in todo if u.trial is None and u.variant == variant]
            done = sum(1 for name in slots if claims.has_ended(rows, name))
            progress.console.print(
                f"search {variant}: {done} of {cfg.trials} trials done in {prepared.study.name}/{variant}"
            )
        if ended:
            progress.console.print(
                f"{ended} of {len(finals)} trials already finished in the store; running the other {len(finals) - ended}"
            )
        steps = sum(u.trial.train.steps for u in finals if not claims.has_ended(rows, u.name))
        runner.overall = progress.add_task("study", total=steps, loss="-", speed="-", eta="-")
        outcomes = []
        while todo:
            rows = prepared.work.rows()
            todo = [u for u in todo if not claims.has_ended(rows, u.name)]
            searching = {u.variant for u in todo if u.trial is None}
            for unit in todo:
                if unit.trial is not None and unit.variant in searching:
                    continue
                if (outcome := _claim_and_run(runner, unit, todo, rows)) is not None:
                    outcomes.append(outcome)
                    break
            else:
                if todo:
                    time.sleep(POLL_S)  # the rest is held by other workers
    return outcomes


def _claim_and_run(runner: TrialRunner, unit: Unit, todo: list[Unit], rows: dict) -> Outcome | None:
    """Claim the unit and run it; None if another worker holds it or it has ended. Stopped
    anywhere from the claim on (Ctrl-C, SIGTERM, a bug), the unit is handed back for whoever
    comes next (once its run is open, the runner has let go of both already)."""
    work = runner.prepared.work
    try:
        if (claim := work.claim(unit.name)) is None:
            return None
        runner.queued = [
            (u.trial.model.mixer, u.trial.train.steps)
            for u in todo
            if u.trial is not None and u is not unit and u.name not in rows
        ]
        if unit.trial is None:
            return runner.search(unit.variant, unit.slot, claim)
        return runner.final(unit.trial, unit.index, claim)
    except BaseException:
        with contextlib.suppress(Exception):  # a store failing too must not hide the first error
            work.release(unit.name)
        raise


def store_outcomes(prepared: PreparedStudy) -> list[Outcome]:
    """Every final trial of the study as the store has it, whichever worker ran it."""
    rows = prepared.work.rows()
    out = []
    for unit in units(prepared.study):
        if unit.trial is None:
            continue
        row = rows.get(unit.name)
        if row is None or row.run_id is None:
            state = Status.FAILED if row is not None and row.state == claims.FAILED else Status.PENDING
            out.append(Outcome(unit.trial, state, reason=(row.detail or "") if row is not None else ""))
            continue
        stored, metrics, failure = prepared.tracker.outcome(row.run_id)
        status = Status(stored) if row.state != claims.OPEN else Status.KILLED
        if row.state == claims.RUNNING:
            status = Status.RUNNING
        out.append(Outcome(unit.trial, status, metrics if status == Status.FINISHED else {}, failure))
    return out

"""What every worker of a study shares, made once: the audited study, its data, its MLflow
experiment and parent runs, the Optuna storage and the work list."""

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.core import processes
from ablate.core.errors import AblateError
from ablate.core.schema import Role, Tag
from ablate.data import DataSource, open_source
from ablate.inference import audit
from ablate.plan.study import Study
from ablate.run import claims, search
from ablate.run.claims import Claim, WorkList
from ablate.run.workers import Stores
from ablate.tracking import records
from ablate.tracking.store import Tracker

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

POLL_S = 0.5  # how often an idle worker looks for work another worker may free


@dataclass
class PreparedStudy:
    """What every worker of a study shares: the audited study, its data and its stores.

    The MLflow side (the store, the experiment, the parent runs) may still be being set up, in
    the background, when training starts (`fresh`): reading `tracker`, `exp_id` or `parents`
    waits for it."""

    study: Study
    leaks: dict[str, float]  # variant → the audit's largest leak
    data: DataSource
    tracking: "Deferred"  # → (Tracker, experiment id, {"study" and each variant: its parent run})
    storage: str
    rdb: "RDBStorage | None"  # None: no variant searches
    work: WorkList
    checkpoints: Path
    fresh: bool  # a new MLflow store: no trial ran before, so none is to be skipped or resumed
    first_step_at: float | None = None  # perf_counter() when this process began its first training step

    @property
    def tracker(self) -> Tracker:
        return self.tracking.result()[0]

    @property
    def exp_id(self) -> str:
        return self.tracking.result()[1]

    @property
    def parents(self) -> dict[str, str]:
        return self.tracking.result()[2]


def prepare(study: Study, stores: Stores, console) -> PreparedStudy:
    """Audit and prepare the data (either may refuse the study before any store is touched),
    then create the stores and parent runs once, whichever worker comes first (several
    processes creating SQLite tables at once would crash)."""
    leaks = audit.audit_study(study)
    audit.refuse_leaks(study, leaks)
    leaky = audit.leaking(leaks)
    console.print(
        f"audit: {len(leaks) - len(leaky)} of {len(leaks)} variants causal"
        + (f"; leaking (allowed by allow_leaky): {', '.join(leaky)}" if leaky else "")
    )
    data = open_source(study.config.data, stores.results / "cache", study.path.parent)
    console.print(data.describe())
    data.check_context(max(t.model.context for t in study.trials))

    stores.results.mkdir(parents=True, exist_ok=True)
    fresh = stores.uri.startswith("sqlite:///") and not Path(stores.uri.removeprefix("sqlite:///")).exists()
    work = WorkList(stores.storage, study.name)
    first = claim_first(work, "setup")
    rdb = search.storage(stores.storage) if study.searches else None  # Optuna only where a variant searches

    def setup() -> tuple[Tracker, str, dict[str, str]]:
        tracker = Tracker(stores.uri, stores.results)
        exp_id, parents = _experiment(study, tracker)
        if first is not None:
            work.end(first, claims.DONE)
        _check_stores(work, tracker, stores, console)
        return tracker, exp_id, parents

    # a fresh store is set up once the first trial trains (`Deferred.start`): MLflow's import and
    # its database's creation take seconds; training waits for them only at its first eval
    fresh = fresh and first is not None
    tracking = Deferred(setup)
    if not fresh:
        tracking.result()
    return PreparedStudy(study, leaks, data, tracking, stores.storage, rdb, work, stores.checkpoints, fresh)


BACKGROUND_NAME = "ablate-mlflow"
BACKGROUND = ThreadPoolExecutor(max_workers=1, thread_name_prefix=BACKGROUND_NAME)  # MLflow writes, in order


class Deferred:
    """Work run in the background once started (or once its result is first asked for). Asked
    for from the background worker itself before it started, it runs there and then: waiting
    for a job queued behind the one asking would never end."""

    def __init__(self, fn):
        self.fn, self.future = fn, None
        self.lock = threading.Lock()

    def start(self) -> Future:
        with self.lock:
            if self.future is None:
                if threading.current_thread().name.startswith(BACKGROUND_NAME):
                    self.future = Future()
                    try:
                        self.future.set_result(self.fn())
                    except BaseException as e:  # noqa: BLE001 - raised again where the result is read
                        self.future.set_exception(e)
                else:
                    self.future = BACKGROUND.submit(self.fn)
            return self.future

    def result(self):
        return self.start().result()


def _check_stores(work: WorkList, tracker: Tracker, stores: Stores, console) -> None:
    """The work list and the MLflow store belong together; checkpoints nothing can resume go."""
    known = next((row.run_id for row in work.rows().values() if row.run_id), None)
    if known is not None and tracker.lifecycle(known) is None:
        raise AblateError(
            f"the study database {stores.storage} lists runs that the MLflow store {stores.uri} has never had: the two "
            "no longer belong together (one was deleted or replaced); delete both, or start with a fresh --results"
        )
    for path in remove_stray_checkpoints(stores.checkpoints, tracker):  # safe for any worker: a live one's are kept
        console.print(f"removed {path}: nothing can resume it", soft_wrap=True)


def _experiment(study: Study, tracker: Tracker) -> tuple[str, dict[str, str]]:
    """The study's MLflow experiment, its parent run and one parent run per variant."""
    exp_id = tracker.experiment(study.name, records.experiment_tags(study))
    parents = {"study": tracker.parent(exp_id, Role.STUDY, study.name, {Tag.STUDY: study.name})}
    for variant in study.config.variants:
        name = variant.name
        parents[name] = tracker.parent(exp_id, Role.VARIANT, name, {Tag.VARIANT: name}, parents["study"])
        tracker.tag(parents[name], records.grouping_tags(study, name))
    return exp_id, parents


def remove_stray_checkpoints(folder: Path, tracker: Tracker) -> list[Path]:
    """Checkpoints nothing can resume (their run was deleted, or the store was replaced) and
    the temporary files of saves cut off by a dead process: removed, and returned."""
    stray = [p for p in folder.glob("*.pt") if tracker.lifecycle(p.stem) != "active"]
    stray += [p for p in folder.glob(".*.tmp") if processes.gone(p.name.removesuffix(".tmp").partition(".pt.")[2])]
    for path in stray:
        path.unlink(missing_ok=True)
    return stray


def claim_first(work: WorkList, unit: str) -> Claim | None:
    """Claim the unit if this worker is first to it; else wait until whoever has it is done (None)."""
    while (claim := work.claim(unit)) is None:
        if claims.has_ended(work.rows(), unit):
            return None
        time.sleep(POLL_S)
    return claim

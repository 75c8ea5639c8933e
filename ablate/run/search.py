"""Per-variant hyperparameter search with Optuna, on a shorter budget, before the final seeds.

Each variant gets one Optuna study (`STUDY/VARIANT`) in a real Optuna storage, resumed on
every rerun. How many trials run, and by which worker, is decided by ablate's work list (one
claim per trial slot, see `claims`), not by counting Optuna's trials: Optuna's GridSampler and
its trial count are not safe under parallel workers. A trial cut off with its worker is queued
again by Optuna's heartbeat retry and resumed from its checkpoint.
"""

import functools
import itertools
import warnings
from typing import Any

from ablate.plan.space import Distribution, SearchConfig
from ablate.run.claims import HEARTBEAT_S, STALE_AFTER_S, retry_races

RUN_ID = "ablate.run_id"  # Optuna user attr: the MLflow run of a search trial (kept by a retry)
FAILURE = "ablate.failure"  # Optuna user attr: why a search trial failed


def sampler(config: SearchConfig, slot: int = 0):
    """The configured sampler for slot `slot` of the work list. A TPE or random sampler is seeded
    with seed + slot: each slot draws its own points, however many workers open the study at once
    (seeded by the trials so far, two workers that opened it together drew the same point). The
    grid is ablate's own: slot i takes grid point i (mod the grid's size), so parallel workers never
    run a point twice (Optuna's GridSampler picks its next point per worker, and two can pick the same)."""
    import optuna

    seed = config.seed + slot
    if config.sampler == "grid":
        points = grid(config)
        return optuna.samplers.PartialFixedSampler(points[slot % len(points)], optuna.samplers.RandomSampler())
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.tpe_startup)


def grid(config: SearchConfig) -> list[dict[str, Any]]:
    """Every combination of the choices, in the order the space lists them."""
    keys = list(config.space)
    return [dict(zip(keys, point)) for point in itertools.product(*(config.space[k].choice for k in keys))]


def pruner(config: SearchConfig):
    import optuna

    if config.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=config.pruner_startup)


def storage(url: str):
    """The Optuna storage, with Optuna's heartbeat: a trial whose worker stops beating for
    claims.STALE_AFTER_S is failed and queued again (same params, same user attrs, so the same
    MLflow run and checkpoint) by RetryHeartbeatStaleTrialCallback."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: wanted

    return retry_races(
        lambda: optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            heartbeat_interval=int(HEARTBEAT_S),
            grace_period=int(STALE_AFTER_S),
            heartbeat_stale_trial_callback=retry_callback(),
        )
    )


@functools.cache
def retry_callback():
    import optuna

    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)


def open_study(name: str, rdb, config: SearchConfig, slot: int = 0):
    """The variant's Optuna study, created or resumed; trials of workers that stopped beating
    are failed and queued again."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=rdb,
        study_name=name,
        direction="minimize",
        sampler=sampler(config, slot),
        pruner=pruner(config),
        load_if_exists=True,
    )
    optuna.storages.fail_stale_trials(study)
    return study


def retry(study, rdb, number: int) -> None:
    """Queue a trial again whose worker is known to be gone (a dead process of this host, or a
    stale claim) without waiting for Optuna's grace period: fail it and hand it to the same retry
    callback. A trial that has already ended (Optuna got there first) is left alone."""
    from optuna.trial import TrialState

    frozen = study.get_trials(deepcopy=False)[number]
    if frozen.state == TrialState.RUNNING and rdb.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL):
        retry_callback()(study, study.get_trials(deepcopy=False)[number])


def suggest(trial, name: str, distribution: Distribution) -> Any:
    """The trial's value for one searched key, drawn from its distribution."""
    if distribution.kind == "choice":
        return trial.suggest_categorical(name, distribution.choice)
    if distribution.kind == "int":
        return trial.suggest_int(name, *distribution.integer)
    return trial.suggest_float(name, *distribution.values, log=distribution.kind == "loguniform")


class SearchTrial:
    """One trial of a variant's search: asked of its Optuna study (a trial whose worker is gone,
    queued again, first), its point of the space drawn, reported to on each eval, told how it
    ended."""

    def __init__(self, name: str, rdb, config: SearchConfig, slot: int, lost_trial: int | None = None):
        self.rdb = rdb
        self.study = open_study(name, rdb, config, slot)
        if lost_trial is not None:
            retry(self.study, rdb, lost_trial)
        with warnings.catch_warnings():  # ask/tell with our own heartbeat thread, not optimize()
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            self.trial = self.study.ask()
        self.params = {key: suggest(self.trial, key, d) for key, d in config.space.items()}

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def run_id(self) -> str | None:
        """The MLflow run an earlier attempt at this trial began (a retry keeps the user attrs)."""
        return self.trial.user_attrs.get(RUN_ID)

    def remember_run(self, run_id: str) -> None:
        self.trial.set_user_attr(RUN_ID, run_id)

    def beat(self) -> None:
        self.rdb.record_heartbeat(self.trial._trial_id)

    def should_prune(self, step: int, val_loss: float) -> bool:
        """Report an eval; whether the pruner gives the trial up."""
        self.trial.report(val_loss, step)
        return self.trial.should_prune()

    def tell(self, val_loss: float | None, pruned: bool = False, failure: str = "") -> str:
        """End the trial: pruned, complete (with its val loss) or failed (with why); Optuna's
        name of the state it ended in."""
        from optuna.trial import TrialState

        if pruned:
            self.study.tell(self.trial, state=TrialState.PRUNED)
            return "PRUNED"
        if val_loss is not None:
            self.study.tell(self.trial, val_loss)
            return "COMPLETE"
        self.trial.set_user_attr(FAILURE, failure)
        self.study.tell(self.trial, state=TrialState.FAIL)
        return "FAIL"


def best(name: str, rdb) -> dict[str, Any] | None:
    """The best setting the variant's search found; None when no trial completed."""
    import optuna

    study = optuna.load_study(study_name=name, storage=rdb)
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    return study.best_trial.params

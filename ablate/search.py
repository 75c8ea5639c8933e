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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ablate.trainer import TrainConfig

# train keys a search may not touch: they define the budget and the bookkeeping, not the recipe
FIXED = ("steps", "eval_every", "eval_batches", "log_every", "device", "compile", "max_loss", "checkpoint_evals")
KINDS = {"loguniform": "loguniform", "uniform": "uniform", "int": "integer", "choice": "choice"}  # YAML key → field


class Distribution(BaseModel):
    """One searched train key: exactly one of loguniform/uniform [low, high], int [low, high], choice [...]."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    integer: tuple[int, int] | None = Field(None, alias="int")
    choice: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in KINDS.values() if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of loguniform, uniform, int, choice")
        bounds = self.values
        if self.kind != "choice" and not bounds[0] < bounds[1]:
            raise ValueError(f"{self.kind} needs [low, high] with low < high, got {bounds}")
        if self.kind == "loguniform" and bounds[0] <= 0:
            raise ValueError("loguniform needs a positive low bound")
        return self

    @property
    def kind(self) -> str:
        return next(k for k, attr in KINDS.items() if getattr(self, attr) is not None)

    @property
    def values(self) -> list[Any]:
        """[low, high], or the choices: the edges of the space, each of which must be valid."""
        return list(getattr(self, KINDS[self.kind]))

    def suggest(self, trial, name: str):
        if self.kind == "choice":
            return trial.suggest_categorical(name, self.choice)
        if self.kind == "int":
            return trial.suggest_int(name, *self.integer)
        return trial.suggest_float(name, *self.values, log=self.kind == "loguniform")

    def describe(self) -> str:
        return f"{self.kind} {self.values}"


class SearchConfig(BaseModel):
    """`search:` of a study (for every variant) or of one variant (merged over the study's)."""

    model_config = ConfigDict(extra="forbid")

    space: dict[str, Distribution] = Field(min_length=1)
    trials: int = Field(8, gt=0, description="Optuna trials per variant, in total over reruns")
    search_steps: int = Field(gt=0, description="optimizer steps of each search trial")
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = 0
    tpe_startup: int = Field(4, ge=1, description="random trials before TPE models the space")
    pruner: Literal["median", "none"] = "median"
    pruner_startup: int = Field(2, ge=0, description="trials that finish unpruned before pruning starts")

    @field_validator("space")
    @classmethod
    def _train_keys(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        for key in space:
            if key in FIXED or key not in TrainConfig.model_fields:
                allowed = sorted(set(TrainConfig.model_fields) - set(FIXED))
                raise ValueError(f"cannot search {key!r}: searchable train keys are {', '.join(allowed)}")
        return space

    @model_validator(mode="after")
    def _grid_of_choices(self):
        if self.sampler == "grid" and any(d.kind != "choice" for d in self.space.values()):
            raise ValueError("the grid sampler needs every searched key as a choice: [...]")
        return self

    def train(self, base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """A search trial's train settings: the variant's, the sampled values, the shorter budget."""
        return {**base, **params, "steps": self.search_steps, "eval_every": min(base["eval_every"], self.search_steps)}

    def check(self, base: dict[str, Any]) -> None:
        """Every edge of the space must give valid settings, for the search trials and for the final
        ones (a ValidationError says which not)."""
        for key, distribution in self.space.items():
            for value in distribution.values:
                TrainConfig(**self.train(base, {key: value}))
                TrainConfig(**{**base, key: value})

    def describe(self) -> str:
        space = ", ".join(f"{k} {d.describe()}" for k, d in self.space.items())
        return f"{space}; {self.trials} trials × {self.search_steps} steps, {self.sampler}, pruner {self.pruner}"


def sampler(config: SearchConfig, n_existing: int, slot: int = 0):
    """The configured sampler. A resumed TPE or random sampler is seeded with seed + trials so far:
    the same seed again would replay its start-up points. The grid is ablate's own: slot i of the
    work list takes grid point i (mod the grid's size), so parallel workers never run a point twice
    (Optuna's GridSampler picks its next point per worker, and two workers can pick the same)."""
    import optuna

    seed = config.seed + n_existing
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

    from ablate.claims import HEARTBEAT_S, STALE_AFTER_S, retry_races

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
    try:
        n_existing = len(optuna.load_study(study_name=name, storage=rdb).trials)
    except KeyError:
        n_existing = 0
    study = optuna.create_study(
        storage=rdb,
        study_name=name,
        direction="minimize",
        sampler=sampler(config, n_existing, slot),
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

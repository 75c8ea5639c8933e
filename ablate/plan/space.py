"""A variant's search: its schema (`search:` of a study, or of one variant, merged over the
study's), and what its trials train with: the variant's settings, a sampled point of the space
and the search's shorter budget, every edge of the space checked before anything runs."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ablate.core.config import TrainConfig

# train keys a search may not touch: they define the budget and the bookkeeping, not the recipe
FIXED = (
    "steps",
    "tokens_per_param",
    "eval_every",
    "eval_batches",
    "log_every",
    "device",
    "compile",
    "max_loss",
    "checkpoint_evals",
)
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

    def describe(self) -> str:
        space = ", ".join(f"{k} {d.describe()}" for k, d in self.space.items())
        return f"{space}; {self.trials} trials × {self.search_steps} steps, {self.sampler}, pruner {self.pruner}"


def search_train(search: SearchConfig, base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """A search trial's train settings: the variant's, the sampled values, the shorter budget."""
    steps = search.search_steps
    return TrainConfig(
        **{**base.model_dump(exclude_unset=True), **params, "steps": steps, "eval_every": min(base.eval_every, steps)}
    )


def with_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The final trials' settings: the variant's, with the search's best values."""
    return TrainConfig(**{**base.model_dump(exclude_unset=True), **params})


def check_space(search: SearchConfig, base: TrainConfig) -> None:
    """Every edge of the space must give valid settings, for the search trials and for the final
    ones (a ValidationError says which not)."""
    for key, distribution in search.space.items():
        for value in distribution.values:
            search_train(search, base, {key: value})
            with_params(base, {key: value})

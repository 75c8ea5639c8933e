"""What a study asks beyond training its trials, typed as config.py's sections are (pydantic
only, no torch): the budget its variants are compared at (`budget:`), the verdicts it expects
(`expect:`, and the contrasts it names), and what each final model is measured on after training
(`decode:`, `eval:`)."""

from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ablate.core.errors import AblateError, did_you_mean
from ablate.core.schema import lower_is_better


class Budget(BaseModel):
    """`budget:` of a study: params (counted as `count`) or flops_per_token, met within `tolerance`.

    A list of sizes makes a scaling study: every variant is solved and trained at every size."""

    model_config = ConfigDict(extra="forbid")

    params: PositiveInt | list[PositiveInt] | None = None
    flops_per_token: PositiveFloat | list[PositiveFloat] | None = None
    count: Literal["total", "non_embedding"] = "non_embedding"
    tolerance: float = Field(0.01, gt=0, lt=1, description="relative: 0.01 is within 1%")

    @field_validator("params", "flops_per_token", mode="before")
    @classmethod
    def _positive_sizes(cls, given: Any, info: ValidationInfo) -> Any:
        """Which entry is wrong and why (pydantic's union of a number and a list would say neither)."""
        for i, size in enumerate(given if isinstance(given, list) else [given]):
            entry = f"entry {i} ({size!r})" if isinstance(given, list) else repr(size)
            if given is not None and (isinstance(size, bool) or not isinstance(size, int | float) or size <= 0):
                raise ValueError(f"{entry} is not a positive number")
            if info.field_name == "params" and given is not None and size != int(size):
                raise ValueError(f"{entry} is not a whole number of parameters")
        return given

    @model_validator(mode="after")
    def _one_target(self):
        if (self.params is None) == (self.flops_per_token is None):
            raise ValueError("a budget sets exactly one of params and flops_per_token")
        if self.scaling:
            given = self._given
            if len(given) < 2 or any(a >= b for a, b in pairwise(given)):
                raise ValueError(f"a list of sizes needs two or more, in increasing order; got {given}")
            labels = [size_label(size) for size in given]
            if len(set(labels)) != len(labels):
                raise ValueError(f"sizes too close to name apart: {labels}")
        return self

    @property
    def _given(self) -> float | list[float]:
        return self.params if self.params is not None else self.flops_per_token

    @property
    def scaling(self) -> bool:
        """Whether the budget is a list of sizes (a scaling study)."""
        return isinstance(self._given, list)

    @property
    def sizes(self) -> list[float]:
        return self._given if self.scaling else [self._given]

    def at(self, size: float) -> "Budget":
        """This budget at one of its sizes."""
        return self.model_copy(update={"params" if self.params is not None else "flops_per_token": size})

    @property
    def target(self) -> float:
        if self.scaling:
            raise ValueError("a list of sizes has no single target; take one with at(size)")
        return self._given

    def describe(self) -> str:
        sizes = ", ".join(f"{size:,.0f}" for size in self.sizes)
        if self.params is not None:
            return f"{sizes} {self.count.replace('_', '-')} parameters"
        return f"{sizes} forward FLOPs per token"


def size_label(size: float) -> str:
    """A size as a variant's name ends: 50000 → 50k, 1.25e6 → 1.25M (4 significant digits)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if size >= scale:
            return f"{size / scale:.4g}{unit}"
    return f"{size:.4g}"


def sized_name(name: str, size: float) -> str:
    """A variant at one size of a scaling study: mha@50k."""
    return f"{name}@{size_label(size)}"


class DecodeConfig(BaseModel):
    """`decode:`: after training, each final trial's model decodes from its state on the trial's
    device, and its run logs prefill and decode speed and the state's bytes at these contexts
    (`ablate.inference.cost`)."""

    model_config = ConfigDict(extra="forbid")

    contexts: list[Annotated[StrictInt, Field(ge=64)]] = Field(
        default_factory=lambda: [256, 1024, 4096, 16384], min_length=1, description="tokens decoded so far"
    )
    steps: int = Field(32, ge=4, le=1024, description="timed decoding steps per context (their median is logged)")


class EvalConfig(BaseModel):
    """`eval:`: after training, each final trial's model is scored at other lengths (its run logs
    val_loss_at/T, `ablate.inference.lengths`) and by lm-evaluation-harness on its tasks (lm_eval/TASK/METRIC,
    `ablate.inference.harness`)."""

    model_config = ConfigDict(extra="forbid")

    contexts: list[Annotated[StrictInt, Field(ge=8)]] | None = Field(
        None, min_length=1, description="lengths to score the model at, past its training context too"
    )
    lm_eval: list[str] | None = Field(None, min_length=1, description="lm-eval task names (arc_easy, ...)")
    include_path: str | None = Field(None, description="a folder of task YAMLs of your own, from the study's folder")
    limit: int | None = Field(None, ge=1, description="the first N documents of each task (default: all)")

    @model_validator(mode="after")
    def _something(self):
        if self.contexts is None and self.lm_eval is None:
            raise ValueError("name contexts, lm_eval tasks, or both")
        return self


class Expectation(BaseModel):
    """A verdict the study should reach: a control. `ablate compare --check` fails when it does not."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    against: str | None = Field(None, description="the variant it is compared with (default: the baseline)")
    metric: str = "val_loss"
    than: str | None = Field(None, description="instead, the variant's own other metric (val_loss_at/128), by seed")
    verdict: Literal["better", "worse", "same", "n/a"] = Field(description="n/a: the variant logs no value of it")
    within: float | None = Field(None, gt=0, lt=1, description="same: its 95% CI within ± this share of the other's")

    @model_validator(mode="after")
    def _one_comparison(self):
        if self.than is not None and self.against is not None:
            raise ValueError("compare with another variant (against) or with another metric (than), not both")
        if self.within is not None and self.verdict != "same":
            raise ValueError("within bounds a 'same' verdict")
        if self.verdict == "n/a" and (self.than or self.against):
            raise ValueError("n/a says the variant logs no value of the metric: it names no other side")
        return self

    @field_validator("metric")
    @classmethod
    def _known_direction(cls, metric: str) -> str:
        try:
            lower_is_better(metric)
        except AblateError as e:
            raise ValueError(f"an expectation needs a metric whose direction is known (a loss or an accuracy): {e}")
        return metric


def _compared(a: str, b: str | None, info: ValidationInfo, alone: bool = False) -> None:
    """A contrast (a, b) or an expectation (b None: the baseline) names the study's variants; in
    a scaling study both at one size each (NAME@SIZE) or both bare (at every size)."""
    data = info.data
    if "variants" not in data:  # refused already
        return
    names = [v.name for v in data["variants"]]
    budget = data.get("budget")
    sized = [sized_name(n, s) for n in names for s in budget.sizes] if budget is not None and budget.scaling else []
    for name in (a, b):
        if name is not None and name not in names + sized:
            raise ValueError(f"{name!r} is not a variant{did_you_mean(name, names + sized)}")
    if b is None and alone:  # compared with its own other metric, or with nothing
        return
    if a == (b or data.get("baseline") or names[0]):
        raise ValueError(f"{a!r} is compared with itself")
    if sized and b is not None and ("@" in a) != ("@" in b):
        raise ValueError(f"{a!r} against {b!r}: name a size on both sides (NAME@SIZE) or on neither (every size)")


def checked_contrast(pair: tuple[str, str], info: ValidationInfo) -> tuple[str, str]:
    _compared(*pair, info)
    return pair


def checked_expectation(e: "Expectation", info: ValidationInfo) -> "Expectation":
    _compared(e.variant, e.against, info, alone=e.than is not None or e.verdict == "n/a")
    return e

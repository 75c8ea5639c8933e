"""Study YAML → validated StudyConfig → plan: the list of trials, before any compute is spent."""

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ablate.budget import Budget, flops_per_token, solve
from ablate.data import DataConfig, source_files
from ablate.data import vocab_size as data_vocab_size
from ablate.errors import AblateError
from ablate.mixers import registry
from ablate.model import ModelConfig, build_model
from ablate.resources import check_fits
from ablate.search import KINDS, SearchConfig
from ablate.tasks import TaskConfig
from ablate.trainer import TrainConfig

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _safe_name(value: str) -> str:
    if not NAME.fullmatch(value):  # fullmatch: `$` would let a final newline through
        raise ValueError("must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


class VariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    scale: Literal["d_model", "n_layers", "ffn_dim", "qkv_dim"] | None = Field(
        None, description="the dimension that absorbs the study's budget (default d_model)"
    )
    search: dict[str, Any] | bool | None = Field(
        None, description="this variant's search, merged over the study's; false: none (default: the study's)"
    )

    _name = field_validator("name")(_safe_name)


class Expectation(BaseModel):
    """A verdict the study should reach: a control. `ablate compare --check` fails when it does not."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    against: str | None = Field(None, description="the variant it is compared with (default: the baseline)")
    metric: str = "val_loss"
    verdict: Literal["better", "worse", "same"]

    @field_validator("metric")
    @classmethod
    def _known_direction(cls, metric: str) -> str:
        from ablate.compare import lower_is_better

        try:
            lower_is_better(metric, None)
        except AblateError as e:
            raise ValueError(f"an expectation needs a metric whose direction is known (a loss or an accuracy): {e}")
        return metric


def _data_kind(value) -> str:
    has_task = isinstance(value, TaskConfig) or (isinstance(value, dict) and "task" in value)
    return "task" if has_task else "corpus"


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    data: Annotated[
        Annotated[DataConfig, Tag("corpus")] | Annotated[TaskConfig, Tag("task")], Discriminator(_data_kind)
    ] = Field(default_factory=DataConfig, description="a corpus (source: ...) or a synthetic task (task: ...)")
    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    variants: list[VariantConfig] = Field(min_length=1)
    seeds: list[Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]] = Field(default_factory=lambda: [0], min_length=1)
    budget: Budget | None = None
    search: dict[str, Any] | None = Field(None, description="an Optuna search for every variant (see SearchConfig)")
    baseline: str | None = None
    allow_leaky: bool = Field(False, description="train variants that fail the causality audit")
    contrasts: list[tuple[str, str]] = Field(
        default_factory=list, description="pairs [a, b]: a tested against b, paired by seed, Holm over the pairs"
    )
    expect: list[Expectation] = Field(default_factory=list, description="verdicts the study should reach")

    _name = field_validator("name")(_safe_name)

    @model_validator(mode="after")
    def _consistent(self):
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        named = [name for pair in self.contrasts for name in pair]
        named += [n for e in self.expect for n in (e.variant, e.against) if n is not None]
        for name in named:
            if name not in names:
                raise ValueError(f"{name!r} is not a variant{registry.did_you_mean(name, names)}")
        for a, b in self.contrasts + [(e.variant, e.against or self.baseline or names[0]) for e in self.expect]:
            if a == b:
                raise ValueError(f"{a!r} is compared with itself")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique, got {self.seeds}")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(
                f"baseline {self.baseline!r} is not a variant{registry.did_you_mean(self.baseline, names)}"
            )
        return self


@dataclass
class Trial:
    variant: str
    seed: int
    model: dict[str, Any]
    train: dict[str, Any]
    n_params: int
    n_params_non_embedding: int
    flops_per_token: float
    state_size: int | None
    search: SearchConfig | None = None  # train keys this trial takes from its variant's search

    def key(self, data: DataConfig) -> str:
        """Identifies the trial's whole configuration: a rerun skips trials already finished."""
        spec = {"data": data.model_dump(), "variant": self.variant, "seed": self.seed, "model": self.model}
        spec["train"] = self.train
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Study:
    config: StudyConfig
    path: Path
    text: str
    trials: list[Trial]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def baseline(self) -> str:
        return self.config.baseline or self.config.variants[0].name

    @property
    def searches(self) -> dict[str, SearchConfig]:
        """variant → its search, for the variants that search before their final seeds."""
        return {t.variant: t.search for t in self.trials if t.search is not None}


# `--smoke`: the same models and data, trained just long enough to see every part run on a CPU.
SMOKE_TRAIN = {"steps": 20, "warmup": 2, "eval_every": 20, "eval_batches": 2, "log_every": 5}
SMOKE_SEARCH = {"trials": 2, "search_steps": 10}


def smoke(config: StudyConfig) -> StudyConfig:
    """The study's smoke form: 20 steps, one seed, 2 search trials of 10 steps, its own experiment
    (NAME-smoke), so it never mixes with real runs."""

    def shrink(search):
        return {**search, **SMOKE_SEARCH} if isinstance(search, dict) else search

    variants = [
        v.model_copy(update={"train": {**v.train, **SMOKE_TRAIN}, "search": shrink(v.search)}) for v in config.variants
    ]
    return config.model_copy(
        update={
            "name": f"{config.name}-smoke",
            "train": {**config.train, **SMOKE_TRAIN},
            "variants": variants,
            "seeds": config.seeds[:1],
            "search": shrink(config.search),
        }
    )


def load(path: str | Path, smoke_form: bool = False, data_source: str | None = None) -> Study:
    """Read, validate and plan a study; every problem is an AblateError naming file, line and key.

    With smoke_form, plan its smoke form (see `smoke`) once the study itself has validated.
    data_source replaces the study's `data.source` (a path from the working directory).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise AblateError(f"{path}: cannot read study ({e.strerror})") from None
    lines = _Lines(path, text)
    document = lines.mapping
    if data_source is not None:
        if isinstance(document.get("data"), dict) and "task" in document["data"]:
            raise AblateError(f"--data: study {path} trains on a synthetic task, not a corpus")
        document = {**document, "data": {**(document.get("data") or {}), "source": str(Path(data_source).resolve())}}
    try:
        config = StudyConfig(**document)
    except ValidationError as e:
        raise AblateError(lines.explain(e)) from None
    vocab = config.data.vocab_size
    if isinstance(config.data, DataConfig):
        try:
            vocab = data_vocab_size(config.data, source_files(config.data, path.parent))
        except AblateError as e:
            key = str(e).split(":")[0].removeprefix("data.")  # errors name their key: data.source, data.val, ...
            raise AblateError(f"{lines.at(('data', key))}: {e}") from None
    if smoke_form:
        _plan(config, lines, vocab)  # the study as written must be valid, not only its smoke form
        config = smoke(config)
    trials = _plan(config, lines, vocab)
    return Study(config, path, text, trials)


def _plan(config: StudyConfig, lines: "_Lines", vocab: int) -> list[Trial]:
    trials = []
    for index, variant in enumerate(config.variants):
        resolved = _resolve(config, variant, index, lines, vocab)
        resolved["search"] = _search(config, variant, index, resolved["train"], lines)
        trials += [Trial(variant=variant.name, seed=seed, **resolved) for seed in config.seeds]
    return trials


def _search(
    config: StudyConfig, variant: VariantConfig, index: int, train: dict[str, Any], lines: "_Lines"
) -> SearchConfig | None:
    """The variant's search: its own `search` merged over the study's, none for `search: false`."""
    if variant.search is False or (variant.search is None and config.search is None):
        return None
    own = isinstance(variant.search, dict)
    merged = {**(config.search or {}), **(variant.search if own else {})}
    where = ("variants", index, "search") if own else ("search",)
    try:
        search = SearchConfig(**merged)
        search.check(train)
    except ValidationError as e:
        raise AblateError(f"{lines.explain(e, lambda loc: where + loc)} (variant {variant.name!r})") from None
    return search


def _resolve(config: StudyConfig, variant: VariantConfig, index: int, lines: "_Lines", vocab: int) -> dict[str, Any]:
    """A variant's full model and train settings (defaults merged with its overrides) and sizes."""
    merged = {**config.model, **variant.model, "vocab_size": vocab}
    own = ("variants", index)
    if isinstance(config.data, TaskConfig):  # a task fixes the sequence length too
        if merged.get("context", config.data.seq_len) != config.data.seq_len:
            where = own if "context" in variant.model else ()
            raise AblateError(
                f"{lines.at(where + ('model', 'context'))}: model.context: a task sets it (data.seq_len "
                f"{config.data.seq_len}); leave it out"
            )
        merged["context"] = config.data.seq_len

    def model_loc(loc: tuple) -> tuple:
        if not loc:
            return own + ("model",)
        if loc[0] == "vocab_size":
            return ("data", "vocab" if isinstance(config.data, TaskConfig) else "vocab_size")
        if loc[0] == "context" and isinstance(config.data, TaskConfig):
            return ("data", "seq_len")
        return (own if loc[0] in variant.model or loc[0] not in config.model else ()) + ("model",) + loc

    def train_loc(loc: tuple) -> tuple:  # a key neither sets (a default) is the study's train section's
        return (own if not loc or loc[0] in variant.train else ()) + ("train",) + loc

    try:
        model_cfg = ModelConfig(**merged)
    except ValidationError as e:
        raise AblateError(lines.explain(e, model_loc)) from None
    try:
        train_cfg = TrainConfig(**{**config.train, **variant.train})
    except ValidationError as e:
        raise AblateError(lines.explain(e, train_loc)) from None
    try:
        check_fits(model_cfg, train_cfg.batch_size, train_cfg.device)
    except AblateError as e:
        raise AblateError(f"{lines.at(model_loc(('d_model',)))}: variant {variant.name!r}: {e}") from None
    try:
        model = model_cfg.resolved()
        built = build_model(model, device="meta")
    except AblateError as e:
        raise AblateError(f"{lines.at(model_loc(('mixer',)))}: variant {variant.name!r}: {e}") from None
    if config.budget is None and variant.scale:
        raise AblateError(f"{lines.at(own + ('scale',))}: variants.{index}.scale: the study has no budget to meet")
    if config.budget is not None:
        try:
            model = solve(model, config.budget, variant.scale or "d_model")
        except AblateError as e:
            raise AblateError(f"{lines.at(own + ('scale',))}: variant {variant.name!r}: {e}") from None
        built = build_model(model, device="meta")
    return {
        "model": model,
        "train": train_cfg.model_dump(mode="json"),
        "n_params": built.n_params(),
        "n_params_non_embedding": built.n_params(non_embedding=True),
        "flops_per_token": flops_per_token(built),
        "state_size": built.state_size(),
    }


class _Lines:
    """The YAML document as plain data, plus the line of every key, for error messages."""

    def __init__(self, path: Path, text: str):
        self.path = path
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.load(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise AblateError(f"{where}: invalid YAML: {e.problem or e.context}") from None
        except yaml.YAMLError as e:
            raise AblateError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise AblateError(f"{path}: a study must be a YAML mapping with name, variants, ...")
        self.mapping = data
        self.line: dict[tuple, int] = {}
        self._index(node, ())

    def _index(self, node, loc: tuple) -> None:
        self.line[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if loc + (key.value,) in self.line:  # YAML's loaders keep the last value silently
                    dotted = ".".join(str(p) for p in loc + (key.value,))
                    first = self.line[loc + (key.value,)]
                    raise AblateError(
                        f"{self.path}:{key.start_mark.line + 1}: {dotted}: duplicate key (first at line {first})"
                    )
                self._index(value, loc + (key.value,))
                self.line[loc + (key.value,)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, loc + (i,))

    def at(self, loc: tuple) -> str:
        """'file:line' for the deepest part of loc that the document has."""
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.line:
                return f"{self.path}:{self.line[loc[:n]]}"
        return str(self.path)

    def explain(self, error: ValidationError, locate=lambda loc: loc) -> str:
        """The first validation error as one line: file:line: dotted.key: problem."""
        err = error.errors()[0]
        loc = tuple(err["loc"])
        if loc[:1] == ("data",) and loc[1:2] in (("corpus",), ("task",)):
            loc = loc[:1] + loc[2:]  # the tag of data's kind is not a key of the document
        loc = locate(loc)
        key = ".".join(str(p) for p in loc) or "(study)"
        if err["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1], self.mapping)
            msg = f"unknown key{registry.did_you_mean(str(loc[-1]), known)}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        return f"{self.at(loc)}: {key}: {msg}"


def _known_keys(parent: tuple, document: dict) -> list[str]:
    """The keys allowed where an unknown one was found (parent: the path to its mapping)."""
    if not parent:
        return list(StudyConfig.model_fields)
    if isinstance(parent[-1], int):
        return list((Expectation if parent[:1] == ("expect",) else VariantConfig).model_fields)
    if len(parent) > 1 and parent[-2] == "space":
        return list(KINDS)
    data = document.get("data")
    sections = {
        "data": TaskConfig if isinstance(data, dict) and "task" in data else DataConfig,
        "model": ModelConfig,
        "train": TrainConfig,
        "search": SearchConfig,
        "budget": Budget,
    }
    return list(sections[parent[-1]].model_fields) if parent[-1] in sections else []

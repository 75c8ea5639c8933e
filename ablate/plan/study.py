"""Study YAML → validated StudyConfig → plan: the list of trials, before any compute is spent."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ablate.core.config import (
    DEFAULT_PRESET,
    HOW_IT_RUNS,
    LATER_SWITCHES,
    DataConfig,
    ModelConfig,
    StudyConfig,
    TaskConfig,
    TrainConfig,
    VariantConfig,
)
from ablate.core.errors import AblateError
from ablate.core.overlay import written
from ablate.core.questions import Budget, sized_name
from ablate.data import tasks
from ablate.data.sources import source_files
from ablate.data.sources import vocab_size as data_vocab_size
from ablate.model import LanguageModel, build_model
from ablate.plan.budget import solve
from ablate.plan.explain import Document
from ablate.plan.flops import flops_per_token
from ablate.plan.forms import sized, smoke
from ablate.plan.resources import DoesNotFit, check_fits
from ablate.plan.space import SearchConfig, check_space
from ablate.train import sharded

# data settings added after studies ran: keyed only away from their default
LATER_DATA_KEYS = (
    *("text_field", "haystack", "needle", "num_needles", "needle_len", "depths", "num_chains", "num_hops"),
    "eval_seq_lens",
)


def _keyed_data(data: DataConfig | TaskConfig) -> dict[str, Any]:
    """The data's settings as a trial's key hashes them: a setting added later counts only away
    from its default, so that an upgrade does not retrain what a study finished."""
    dumped = data.model_dump()
    fields = type(data).model_fields
    return {
        k: v
        for k, v in dumped.items()
        if not (k in LATER_DATA_KEYS and v == fields[k].get_default(call_default_factory=True))
    }


@dataclass
class Trial:
    variant: str
    seed: int
    model: ModelConfig  # every mixer option's default filled in
    train: TrainConfig
    n_params: int
    n_params_non_embedding: int
    flops_per_token: float
    state_size: int | None
    search: SearchConfig | None = None  # train keys this trial takes from its variant's search
    scaled: str | None = None  # in a scaling study: the variant as written (this one is NAME@SIZE) ...
    size: float | None = None  # ... and the budget's size it was solved at

    def key(self, data: DataConfig | TaskConfig) -> str:
        """Identifies the trial's whole configuration: a rerun skips trials already finished."""
        spec = {"data": _keyed_data(data), "variant": self.variant, "seed": self.seed, "model": self._keyed_model()}
        spec["train"] = self.train.model_dump(mode="json", exclude=HOW_IT_RUNS)
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def _keyed_model(self) -> dict[str, Any]:
        """The model's settings as the key hashes them: the preset is a name for the switches
        (which count), and a switch added later counts only away from its default."""
        model = self.model.model_dump(exclude={"preset"})
        defaults = {k: ModelConfig.model_fields[k].default for k in LATER_SWITCHES}
        return {k: v for k, v in model.items() if not (k in defaults and v == defaults[k])}

    def as_dict(self) -> dict[str, Any]:
        """The trial as `ablate plan --json` prints it: each model as `build_model` takes it."""
        searched = self.search.model_dump(mode="json", by_alias=True, exclude_none=True) if self.search else None
        return {
            "variant": self.variant,
            "seed": self.seed,
            "model": self.model.model_dump(mode="json"),
            "n_params": self.n_params,
            "n_params_non_embedding": self.n_params_non_embedding,
            "flops_per_token": self.flops_per_token,
            "state_size": self.state_size,
            "search": searched,
            "scaled": self.scaled,
            "size": self.size,
        }


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

    @property
    def devices(self) -> int:
        """The processes each trial trains on (train.devices): one number for the whole study, since
        a worker is started as that many ranks."""
        counts = sorted({t.train.devices for t in self.trials})
        if len(counts) > 1:
            raise AblateError(f"{self.path}: train.devices must be the same for every variant, got {counts}")
        return counts[0]


def load(
    path: str | Path, smoke_form: bool = False, data_source: str | None = None, base_dir: Path | None = None
) -> Study:
    """Read, validate and plan a study; every problem is an AblateError naming file, line and key.

    With smoke_form, plan its smoke form (see `smoke`) once the study itself has validated.
    data_source replaces the study's `data.source` (a path from the working directory).
    base_dir: where relative data paths start (default: the study's folder; a copy's is its original's).
    """
    path = Path(path)
    base_dir = path.parent if base_dir is None else base_dir
    try:
        text = path.read_text()
    except OSError as e:
        raise AblateError(f"{path}: cannot read study ({e.strerror})") from None
    lines = Document(path, text)
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
    if isinstance(config.data, TaskConfig):
        try:
            tasks.check(config.data, base_dir)
        except AblateError as e:
            where = ("data", "task") if config.data.task not in tasks.TASKS else ("data",)
            raise AblateError(f"{lines.at(where)}: {'.'.join(where)}: {e}") from None
    else:
        try:
            vocab = data_vocab_size(config.data, source_files(config.data, base_dir), base_dir)
        except AblateError as e:
            key = str(e).split(":")[0].removeprefix("data.")  # errors name their key: data.source, data.val, ...
            raise AblateError(f"{lines.at(('data', key))}: {e}") from None
    if config.eval is not None:
        _check_eval(config, lines, base_dir)
    if smoke_form:
        _plan(config, lines, vocab)  # the study as written must be valid, not only its smoke form
        config = smoke(config)
    trials = _plan(config, lines, vocab)
    return Study(sized(config), path, text, trials)


def _check_eval(config: StudyConfig, lines: Document, base_dir: Path) -> None:
    """`eval:` on a corpus (lengths and lm-eval's tasks score text), its tasks known to lm-eval
    before anything trains."""
    from ablate.inference import harness

    if isinstance(config.data, TaskConfig):
        raise AblateError(f"{lines.at(('eval',))}: eval: scores a corpus; this study trains on a synthetic task")
    if config.eval.lm_eval is None:
        return
    try:
        harness.check_tasks(config.eval.lm_eval, harness.task_manager(harness.include_folder(config.eval, base_dir)))
    except AblateError as e:
        raise AblateError(f"{lines.at(('eval',))}: eval: {e}") from None


def _plan(config: StudyConfig, lines: Document, vocab: int) -> list[Trial]:
    trials = []
    for index, variant in enumerate(config.variants):
        for size in config.budget.sizes if config.budget is not None else [None]:
            budget = config.budget.at(size) if size is not None else None
            resolved = _resolve(config, variant, index, lines, vocab, budget)
            resolved["search"] = _search(config, variant, index, resolved["train"], lines)
            name, scaled = variant.name, None
            if config.scaling:
                name, scaled = sized_name(variant.name, size), variant.name
            trials += [
                Trial(variant=name, seed=seed, scaled=scaled, size=size if scaled else None, **resolved)
                for seed in config.seeds
            ]
    return trials


def _search(
    config: StudyConfig, variant: VariantConfig, index: int, train: TrainConfig, lines: Document
) -> SearchConfig | None:
    """The variant's search: its own `search` merged over the study's, none for `search: false`."""
    if variant.search is False or (variant.search is None and config.search is None):
        return None
    own = isinstance(variant.search, dict)
    merged = {**(config.search or {}), **(variant.search if own else {})}
    where = ("variants", index, "search") if own else ("search",)
    try:
        search = SearchConfig(**merged)
        check_space(search, train)
    except ValidationError as e:
        raise AblateError(f"{lines.explain(e, lambda loc: where + loc)} (variant {variant.name!r})") from None
    return search


@dataclass
class _Place:
    """Where in the study file a variant's merged settings come from: its own section, else the
    study's (a key neither sets, a default, is placed in the study's section)."""

    config: StudyConfig
    variant: VariantConfig
    index: int

    @property
    def own(self) -> tuple:
        return ("variants", self.index)

    def model(self, loc: tuple) -> tuple:
        task = isinstance(self.config.data, TaskConfig)
        if not loc:
            return self.own + ("model",)
        if loc[0] == "vocab_size":
            return ("data", "vocab" if task else "vocab_size")
        if loc[0] == "context" and task:
            return ("data", "seq_len")
        return (
            (self.own if loc[0] in written(self.variant.model) or loc[0] not in written(self.config.model) else ())
            + ("model",)
            + loc
        )

    def train(self, loc: tuple) -> tuple:
        return (self.own if not loc or loc[0] in written(self.variant.train) else ()) + ("train",) + loc


def _model_settings(place: _Place, lines: Document, vocab: int) -> dict[str, Any]:
    """The variant's model settings over the study's, with the data's vocabulary (and a task's
    sequence length as the context)."""
    config, variant = place.config, place.variant
    merged = {"preset": DEFAULT_PRESET, **written(config.model), **written(variant.model), "vocab_size": vocab}
    if isinstance(config.data, TaskConfig):  # a task fixes the sequence length too
        if merged.get("context", config.data.seq_len) != config.data.seq_len:
            where = place.own if "context" in written(variant.model) else ()
            raise AblateError(
                f"{lines.at(where + ('model', 'context'))}: model.context: a task sets it (data.seq_len "
                f"{config.data.seq_len}); leave it out"
            )
        merged["context"] = config.data.seq_len
    return merged


def _resolve(
    config: StudyConfig, variant: VariantConfig, index: int, lines: Document, vocab: int, budget: Budget | None
) -> dict[str, Any]:  # Trial's fields but its variant and seed
    """A variant's full model and train settings (defaults merged with its overrides) and sizes,
    solved to meet the budget (one size of the study's)."""
    place = _Place(config, variant, index)
    written_train = written(config.train) | written(variant.train)
    try:
        train_cfg = TrainConfig(**written_train)
    except ValidationError as e:
        raise AblateError(lines.explain(e, place.train)) from None
    if train_cfg.shard and (why := sharded.missing()):
        raise AblateError(f"{lines.at(place.train(('shard',)))}: train.shard: {why}")
    try:
        built = model_for(_model_settings(place, lines, vocab), train_cfg.batch_size, train_cfg.device)
    except ValidationError as e:
        raise AblateError(lines.explain(e, place.model)) from None
    except DoesNotFit as e:
        raise AblateError(f"{lines.at(place.model(('d_model',)))}: variant {variant.name!r}: {e}") from None
    except AblateError as e:
        raise AblateError(f"{lines.at(place.model(('mixer',)))}: variant {variant.name!r}: {e}") from None
    model, scale_at = built.cfg, lines.at(place.own + ("scale",))
    if budget is None and variant.scale:
        raise AblateError(f"{scale_at}: variants.{index}.scale: the study has no budget to meet")
    if budget is not None:
        try:
            model = solve(model, budget, variant.scale or "d_model")
        except AblateError as e:
            raise AblateError(f"{scale_at}: variant {variant.name!r}: {e}") from None
        built = build_model(model, device="meta")
    if train_cfg.tokens_per_param is not None:
        train_cfg = _steps_from_tokens(train_cfg, written_train, built, budget, place.train, lines)
    return {
        "model": model,
        "train": train_cfg,
        "n_params": built.n_params(),
        "n_params_non_embedding": built.n_params(non_embedding=True),
        "flops_per_token": flops_per_token(built),
        "state_size": built.state_size(),
    }


def model_for(settings: dict[str, Any], batch_size: int, device: str) -> LanguageModel:
    """The model the settings describe, built on the meta device: validated (a ValidationError,
    for the caller to place), checked to fit in memory here (DoesNotFit) and its mixer's options
    checked (AblateError). Planning a study and benching a mixer check a model the same way."""
    cfg = ModelConfig(**settings)
    check_fits(cfg, batch_size, device)
    return build_model(cfg, device="meta")


def _steps_from_tokens(
    train_cfg: TrainConfig, written: dict, built: LanguageModel, budget: Budget | None, train_loc, lines: Document
) -> TrainConfig:
    """train with `steps` set so that the model sees tokens_per_param tokens per budgeted parameter
    (the non-embedding count unless the budget counts the total)."""
    if "steps" in written:
        raise AblateError(f"{lines.at(train_loc(('steps',)))}: train.steps: give steps or tokens_per_param, not both")
    counted = built.n_params(non_embedding=budget is None or budget.count == "non_embedding")
    steps = max(1, round(train_cfg.tokens_per_param * counted / (train_cfg.batch_size * built.cfg.context)))
    try:
        return TrainConfig(**{**written, "steps": steps})
    except ValidationError as e:
        message = lines.explain(e, train_loc)
        raise AblateError(f"{message} (steps {steps:,} from tokens_per_param)") from None

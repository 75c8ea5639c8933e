"""What a study's experiment and its trial runs carry: the study record, the tags a user groups
and filters by, every setting as a param, and the data as an MLflow dataset."""

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ablate.core import processes
from ablate.core.config import DataConfig, TaskConfig
from ablate.core.questions import Budget, Expectation
from ablate.core.schema import Param, Tag
from ablate.tracking.views import VIEW_TAG, runs_view

if TYPE_CHECKING:  # the records read a planned study and its data; importing them would import torch
    from ablate.data.meta import DataMeta
    from ablate.plan.study import Study, Trial


class StudyRecord(BaseModel):
    """What `compare` needs of a study, kept with its MLflow experiment (one JSON tag): its variants
    in order (NAME@SIZE in a scaling study), the baseline, the contrasts, the expectations and
    the budget that was held equal."""

    model_config = ConfigDict(extra="forbid")

    study: str
    variants: list[str]
    baseline: str
    contrasts: list[tuple[str, str]] = Field(default_factory=list)
    expect: list[Expectation] = Field(default_factory=list)
    budget: Budget | None = None


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested settings as MLflow params: {'model': {'d_model': 64}} → {'model.d_model': '64'}."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(value) if isinstance(value, (list, tuple)) else str(value)}


def study_record(study: "Study") -> StudyRecord:
    config = study.config
    names = [v.name for v in config.variants]
    return StudyRecord(
        study=study.name,
        variants=names,
        baseline=study.baseline,
        contrasts=config.contrasts,
        expect=config.expect,
        budget=config.budget,
    )


def experiment_tags(study: "Study") -> dict[str, str]:
    """The study experiment's tags: what marks it a study, its record, the runs table's view."""
    return {
        Tag.STUDY: study.name,
        Tag.RECORD: study_record(study).model_dump_json(),
        VIEW_TAG: json.dumps(runs_view()),
    }


def grouping_tags(study: "Study", variant: str) -> dict[str, str]:
    """What a user groups and filters a variant's runs by in the MLflow UI: its mixer family,
    whether its blocks have an FFN, and the study's contrasts it is part of."""
    model = next(t.model for t in study.trials if t.variant == variant)
    contrasts = [f"{a} vs {b}" for a, b in study.config.contrasts if variant in (a, b)]
    tags = {Tag.FAMILY: model.mixer, Tag.FFN: str(model.ffn).lower()}
    return tags | ({Tag.CONTRAST: "; ".join(contrasts)} if contrasts else {})


def trial_tags(study: "Study", trial: "Trial", meta: "DataMeta", causal: bool, leak: float) -> dict[str, str]:
    """The tags of a trial's run: what it is (study, variant, seed, trial key, data), whether it is causal."""
    return {
        Tag.STUDY: study.name,
        Tag.VARIANT: trial.variant,
        Tag.SEED: str(trial.seed),
        Tag.TRIAL_KEY: trial.key(study.config.data),
        Tag.DATA_FINGERPRINT: meta.fingerprint,
        Tag.STUDY_DIR: str(study.path.parent.resolve()),
        Tag.PYTHON_VERSION: meta.python_version,
        Tag.CAUSAL: str(causal).lower(),
        Tag.MAX_LEAK: f"{leak:.3e}",
        **grouping_tags(study, trial.variant),
        **({Tag.SCALED: trial.scaled, Tag.SIZE: f"{trial.size:.12g}"} if trial.scaled else {}),
    }


def placement() -> dict[str, str]:
    """Where a trial trains: its worker (host:pid) and, where set, the GPUs its executor gave it."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {Tag.WORKER: processes.owner()} | ({Tag.CUDA_VISIBLE_DEVICES: gpus} if gpus is not None else {})


def trial_params(study: "Study", trial: "Trial", meta: "DataMeta", device: str) -> dict[str, str]:
    """The params of a trial's run: its whole configuration, its data and its sizes."""
    from ablate.nn.ops.kernels import default_kernel  # torch: imported by the trainer that calls this

    budget = study.config.budget
    if budget is not None and trial.size is not None:
        budget = budget.at(trial.size)
    return {
        **flatten(Param.MODEL, trial.model.model_dump()),
        **flatten(Param.TRAIN, trial.train.model_dump(mode="json")),
        **flatten(Param.DATA, study.config.data.model_dump()),
        Param.DATA_FINGERPRINT: meta.fingerprint,
        Param.UNIGRAM_ENTROPY: f"{meta.unigram_entropy:.6f}",
        **({Param.CHANCE_ACCURACY: f"{meta.chance_accuracy:.6f}"} if meta.chance_accuracy is not None else {}),
        Param.VARIANT: trial.variant,
        Param.SEED: str(trial.seed),
        Param.N_PARAMS: str(trial.n_params),
        Param.N_PARAMS_NON_EMBEDDING: str(trial.n_params_non_embedding),
        Param.FLOPS_PER_TOKEN: f"{trial.flops_per_token:.0f}",
        Param.BUDGET: budget.describe() if budget else "none",
        Param.STATE_SIZE: str(trial.state_size),
        Param.DEVICE: device,
        Param.DEFAULT_KERNEL: default_kernel(device),
    }


def dataset(meta: "DataMeta", data: DataConfig | TaskConfig):
    """A study's data as an MLflow Dataset: a task by its name and generator, a corpus by its
    files (or the Python standard library), with the tokenizer and the sizes as its profile."""
    from mlflow.entities import Dataset

    if isinstance(data, TaskConfig):
        name, kind, source = data.task, "generated", {"task": data.task, "seed": data.seed}
        profile = {"vocab_size": data.vocab, "seq_len": data.seq_len, "n_train": data.n_train, "n_val": data.n_val}
    else:
        where = data.train or data.source
        name, kind = Path(where).name, "python-stdlib" if where == "stdlib" else "local"
        source = {"uri": where} if data.train is None else {"train": data.train, "val": data.val}
        tokenizer = data.tokenizer if data.is_text else "none (token ids)"
        profile = {"tokenizer": tokenizer, "vocab_size": meta.vocab_size}
        profile |= {"n_train_tokens": meta.n_train_tokens, "n_val_tokens": meta.n_val_tokens}
    return Dataset(
        name=name, digest=meta.fingerprint, source_type=kind, source=json.dumps(source), profile=json.dumps(profile)
    )

"""lm-evaluation-harness on an ablate model: the field's benchmarks (and a researcher's own tasks)
scored by the harness itself, through transformers' side of the model (`ablate.hf`).

Each task's metrics come back as `lm_eval/<task>/<metric>` (a filter other than lm-eval's
`none` is appended: `exact_match_strict-match`), which a run logs and `ablate compare` compares
across seeds like any other metric. Tasks of an include folder read their relative `data_files`
from that folder.
"""

import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ablate.core.errors import AblateError
from ablate.core.questions import EvalConfig
from ablate.core.schema import Metric
from ablate.model import LanguageModel

# what loglikelihood scoring costs beside a forward over the batch: lm-eval sorts and pads requests
BATCH_SIZE = 1


def include_folder(asked: EvalConfig, study_dir: Path) -> Path | None:
    """A study's `eval.include_path`, from the study's folder."""
    return None if asked.include_path is None else study_dir / asked.include_path


@functools.cache  # indexing lm-eval's task folders takes seconds: a study's load and its trials share one
def task_manager(include_path: Path | None):
    """lm-eval's task index: its own tasks, and those in `include_path`."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise AblateError('lm-evaluation-harness is not installed: pip install "ablate[eval]"') from None

    if include_path is not None and not include_path.is_dir():
        raise AblateError(f"lm-eval include path {include_path} is not a folder")
    return TaskManager(include_path=str(include_path.resolve()) if include_path else None)


def check_tasks(tasks: list[str], manager) -> None:
    """Refuse, in one line, a task lm-eval does not know."""
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise AblateError(
            f"unknown lm-eval task {unknown[0]!r}: `lm_eval ls tasks` lists them (a local task's folder is --include-path)"
        )


def lm_eval_scores(
    model: LanguageModel,
    tokenizer: Path | None,
    tasks: list[str],
    include_path: Path | None = None,
    limit: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The harness's metrics for the model on `tasks` (each on its first `limit` documents)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from ablate.hf.folder import hf_tokenizer
    from ablate.hf.modeling import AblateForCausalLM

    if tokenizer is None:
        raise AblateError("this model trained on token ids with no tokenizer: lm-eval's tasks are text")
    if not model.causal:
        raise AblateError(f"{model.cfg.mixer} is not causal here: lm-eval's scores would read the tokens they predict")
    manager = task_manager(include_path)
    check_tasks(tasks, manager)
    hf = AblateForCausalLM.wrapping(model.to(device))
    lm = HFLM(pretrained=hf, tokenizer=hf_tokenizer(tokenizer, model.cfg.context), batch_size=BATCH_SIZE)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    with _working_in(include_path), torch.inference_mode():
        results = simple_evaluate(
            model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=False, verbosity="ERROR"
        )
    return metrics(results["results"])


def metrics(results: dict[str, dict]) -> dict[str, float]:
    """lm-eval's results per task as ablate's metric names (standard errors left out: compare
    draws its intervals from the seeds)."""
    out = {}
    for task, values in results.items():
        for key, value in values.items():
            name, _, kind = key.partition(",")
            if not kind or "_stderr" in name or not isinstance(value, int | float):
                continue
            out[Metric.LM_EVAL.format(task=task, metric=name if kind == "none" else f"{name}_{kind}")] = float(value)
    return out


@contextmanager
def _working_in(folder: Path | None) -> Iterator[None]:
    """In `folder` (where its tasks' relative data files are), then back."""
    before = Path.cwd()
    if folder is not None:
        os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)

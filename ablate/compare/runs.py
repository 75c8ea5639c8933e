"""A study's runs as the comparison reads them from MLflow: its record, the finished final
trials, the failed seeds, the newest run of each seed, and the learning curves."""

import math

import numpy as np
import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.schema import Metric, Param, Tag, param_column, tag_column
from ablate.tracking import store
from ablate.tracking.records import StudyRecord

CURVE_METRIC = Metric.VAL_LOSS  # the curve convergence is judged on, drawn beside the compared metric's
VARIANT, SEED = tag_column(Tag.VARIANT), tag_column(Tag.SEED)  # the frame's columns a comparison groups by


def study_runs(uri: str, study: str | None) -> tuple[StudyRecord, pd.DataFrame, dict[str, int]]:
    """(the study's record, its FINISHED final-phase trial runs as a frame, and per variant the
    number of seeds whose final run FAILED: diverged or out of memory)."""
    c = store.client(uri)
    name = study or store.latest_study(c)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        raise AblateError(f"no study named {name!r} in {uri}")
    if Tag.RECORD not in exp.tags:
        raise AblateError(
            f"study {name!r} was recorded by an older ablate: rerun `ablate run` on its YAML (nothing finished "
            "trains again) to record what compare reads"
        )
    record = StudyRecord.model_validate_json(exp.tags[Tag.RECORD])
    runs = store.study_frame(uri, exp.experiment_id)
    if not runs.empty:
        runs = runs[store.final_trials(runs)]
    finished = runs[runs["status"] == "FINISHED"] if not runs.empty else runs
    failed = failures(runs)
    if finished.empty and failed:
        counts = ", ".join(f"{variant} {n} seed(s)" for variant, n in failed.items())
        reasons = runs.get(tag_column(Tag.FAILURE), pd.Series(dtype=str)).dropna()
        why = f"; the first reason: {reasons.iloc[0]}" if len(reasons) else ""
        raise AblateError(f"study {name!r}: every run failed ({counts}){why}")
    if finished.empty:
        raise AblateError(f"study {name!r} has no finished runs yet")
    return record, finished, failed


def failures(runs: pd.DataFrame) -> dict[str, int]:
    """variant → seeds whose final run FAILED and that have no FINISHED run: a failure is a
    result, not a silent gap in the table."""
    key = [VARIANT, SEED]
    done = set(map(tuple, runs.loc[runs["status"] == "FINISHED", key].to_numpy()))
    failed = runs[runs["status"] == "FAILED"].drop_duplicates(key)
    failed = failed[np.array([tuple(k) not in done for k in failed[key].to_numpy()], dtype=bool)]
    return failed[VARIANT].value_counts().to_dict()


def latest_per_seed(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One run per (variant, seed), the newest, and how many older ones were set aside
    (a study edited between runs leaves runs of older settings in its experiment)."""
    newest = runs.sort_values("start_time").drop_duplicates([VARIANT, SEED], keep="last")
    return newest, len(runs) - len(newest)


def curves(c, runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The metric's history in every run: columns variant, seed, step, value."""
    rows = [
        {"variant": run[VARIANT], "seed": run[SEED], "step": step, "value": value}
        for _, run in runs.iterrows()
        for step, value in store.history(c, run["run_id"], metric)
    ]
    return pd.DataFrame(rows, columns=["variant", "seed", "step", "value"])


def loss_scale(runs: pd.DataFrame) -> tuple[float, float | None]:
    """ln(vocab), the loss at step 0, and the unigram entropy, from the runs' params (NaN and None
    for runs that did not log them)."""
    vocab = runs.get(param_column(f"{Param.MODEL}.vocab_size"))
    unigram = runs.get(param_column(Param.UNIGRAM_ENTROPY))
    start = math.log(float(vocab.dropna().iloc[0])) if vocab is not None and vocab.notna().any() else math.nan
    return start, float(unigram.dropna().iloc[0]) if unigram is not None and unigram.notna().any() else None

"""A study's runs as the comparison reads them from MLflow: the finished final trials, the failed
seeds, the newest run of each seed, and the learning curves."""

import math

import numpy as np
import pandas as pd

from ablate import tracking
from ablate.errors import AblateError

CURVE_METRIC = "val_loss"  # the curve convergence is judged on, drawn beside the compared metric's


def study_runs(uri: str, study: str | None) -> tuple[str, dict[str, str], pd.DataFrame, dict[str, int]]:
    """(study name, its experiment tags, its FINISHED final-phase trial runs as a frame, and per
    variant the number of seeds whose final run FAILED: diverged or out of memory)."""
    import mlflow

    c = tracking.client(uri)
    name = study or tracking.latest_study(c)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        raise AblateError(f"no study named {name!r} in {uri}")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="pandas", max_results=50_000)
    if not runs.empty:
        runs = runs[tracking.final_trials(runs)]
    finished = runs[runs["status"] == "FINISHED"] if not runs.empty else runs
    if finished.empty:
        raise AblateError(f"study {name!r} has no finished runs yet")
    return name, exp.tags, finished, failures(runs)


def failures(runs: pd.DataFrame) -> dict[str, int]:
    """variant → seeds whose final run FAILED and that have no FINISHED run: a failure is a
    result, not a silent gap in the table."""
    key = ["tags.ablate.variant", "tags.ablate.seed"]
    done = set(map(tuple, runs.loc[runs["status"] == "FINISHED", key].to_numpy()))
    failed = runs[runs["status"] == "FAILED"].drop_duplicates(key)
    failed = failed[np.array([tuple(k) not in done for k in failed[key].to_numpy()], dtype=bool)]
    return failed["tags.ablate.variant"].value_counts().to_dict()


def latest_per_seed(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One run per (variant, seed), the newest, and how many older ones were set aside
    (a study edited between runs leaves runs of older settings in its experiment)."""
    newest = runs.sort_values("start_time").drop_duplicates(["tags.ablate.variant", "tags.ablate.seed"], keep="last")
    return newest, len(runs) - len(newest)


def curves(client, runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The metric's history in every run: columns variant, seed, step, value."""
    rows = [
        {"variant": run["tags.ablate.variant"], "seed": run["tags.ablate.seed"], "step": m.step, "value": m.value}
        for _, run in runs.iterrows()
        for m in client.get_metric_history(run["run_id"], metric)
    ]
    return pd.DataFrame(rows, columns=["variant", "seed", "step", "value"])


def loss_scale(runs: pd.DataFrame) -> tuple[float, float | None]:
    """ln(vocab), the loss at step 0, and the unigram entropy, from the runs' params (NaN and None
    for runs that did not log them)."""
    vocab, unigram = (runs.get(f"params.{key}") for key in ("model.vocab_size", "data.unigram_entropy"))
    start = math.log(float(vocab.dropna().iloc[0])) if vocab is not None and vocab.notna().any() else math.nan
    return start, float(unigram.dropna().iloc[0]) if unigram is not None and unigram.notna().any() else None

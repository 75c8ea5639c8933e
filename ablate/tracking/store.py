"""MLflow as the results store: one experiment per study, one run per trial, and every call the
run and compare code make of it.

Metrics are buffered and written with `log_batch` at eval points and when a run ends, so
logging costs no per-step round trips to the store.
"""

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.core.errors import AblateError
from ablate.core.schema import Metric, Phase, Role, Tag, metric_column, param_column, quoted, tag_column

if TYPE_CHECKING:
    import pandas as pd

# MLflow 3's UI opens an experiment in its GenAI mode unless told otherwise: the experiment's kind
# (a tag the UI reads) and the `workflowType` of a UI link say that a study trains models
MODEL_TRAINING = {"mlflow.experimentKind": "custom_model_development"}
MANY = 50_000  # runs read at once: more than any study has


def tracking_uri(results: Path, explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the SQLite file under results/."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{results.resolve() / 'mlflow.db'}"


def client(uri: str):
    """An MLflow client on the store; artifact downloads (sample, eval) draw no progress bars."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient  # importing mlflow resets its loggers, so quieten them after

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    return MlflowClient(tracking_uri=uri)


class Tracker:
    """The store as the run code writes it: experiments, parent runs, trial runs and their tags."""

    def __init__(self, uri: str, results: Path):
        self.uri, self.results = uri, results
        self.client = client(uri)

    def experiment(self, name: str, tags: dict[str, str]) -> str:
        """The study's experiment, created on first use, its tags set (again) to the study's."""
        exp_id = self.experiment_id(name)
        for key, value in (tags | MODEL_TRAINING).items():
            self.client.set_experiment_tag(exp_id, key, value)
        return exp_id

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created on first use with its artifacts under results/ (for a
        database store, SQLite or PostgreSQL; a server keeps its own)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if not self.uri.startswith(("http://", "https://")):  # a database store keeps no artifacts itself
            location = (self.results.resolve() / "artifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def finished_trials(self, exp_id: str) -> dict[str, tuple[str, dict[str, float]]]:
        """trial key → (run id, final metrics) of the final-phase trials that have a FINISHED run."""
        runs = self.client.search_runs([exp_id], filter_string="attributes.status = 'FINISHED'", max_results=MANY)
        return {
            r.data.tags[Tag.TRIAL_KEY]: (r.info.run_id, r.data.metrics)
            for r in runs
            if Tag.TRIAL_KEY in r.data.tags and r.data.tags.get(Tag.PHASE, Phase.FINAL) == Phase.FINAL
        }

    def unclaimed_runs(self, exp_id: str, key: str) -> list[str]:
        """The RUNNING final-phase runs of the trial `key`: a worker killed after opening the run and
        before noting it on its claim leaves one, which no claim names and no rerun resumes."""
        query = f"tags.{quoted(Tag.TRIAL_KEY)} = '{key}' and attributes.status = 'RUNNING'"
        runs = self.client.search_runs([exp_id], filter_string=query, max_results=MANY)
        return [r.info.run_id for r in runs if r.data.tags.get(Tag.PHASE, Phase.FINAL) == Phase.FINAL]

    def parent(self, exp_id: str, role: str, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        """The run that groups others in the MLflow UI (role study, or variant), made once and
        reused by every later run of the study."""
        query = f"tags.{quoted(Tag.ROLE)} = '{role}'" + "".join(
            f" and tags.{quoted(k)} = '{v}'" for k, v in tags.items()
        )
        found = self.client.search_runs([exp_id], filter_string=query, max_results=1)
        if found:
            return found[0].info.run_id
        nest = {"mlflow.parentRunId": parent_id} if parent_id else {}
        return self.client.create_run(exp_id, run_name=name, tags={Tag.ROLE: role, **tags, **nest}).info.run_id

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_final(self, run_id: str, values: dict[str, float]) -> None:
        """Metrics of a run that has no curve (a parent's aggregates), at step 0."""
        log = RunLog(self.client, run_id)
        log.metrics(0, values)
        log.flush()

    def log_dataset(self, run_id: str, dataset) -> None:
        """The run's data as an MLflow dataset input (records.dataset): the runs table's Dataset
        column, the run page's Datasets."""
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        used = DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])
        try:
            self.client.log_inputs(run_id, datasets=[used])
        except MlflowException as e:  # MLflow looks the dataset up, then inserts it: two workers
            if not _duplicate_row(e):  # that log it at once both insert; the second finds it now
                raise
            self.client.log_inputs(run_id, datasets=[used])

    def set_status(self, run_id: str, status: str) -> None:
        self.client.update_run(run_id, status=status)

    def delete(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def outcome(self, run_id: str) -> tuple[str, dict[str, float], str]:
        """A run's status, its final metrics and, for a failed run, why."""
        run = self.client.get_run(run_id)
        return run.info.status, run.data.metrics, run.data.tags.get(Tag.FAILURE, "")

    def start(
        self, exp_id: str, run_name: str, tags: dict[str, str], params: dict[str, str], parent_id: str | None = None
    ) -> "RunLog":
        nest = {"mlflow.parentRunId": parent_id} if parent_id else {}
        run = self.client.create_run(exp_id, run_name=run_name, tags={**tags, **nest})
        log = RunLog(self.client, run.info.run_id)
        log.params(params)
        return log

    def lifecycle(self, run_id: str) -> str | None:
        """ "active" or "deleted" for a run the store holds; None for one it has never had."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def resume(self, run_id: str) -> "RunLog | None":
        """The run an interrupted worker left (RUNNING, KILLED or FAILED), running again; None
        when the store no longer has it."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.lifecycle_stage != "active":
            return None
        self.client.update_run(run_id, status="RUNNING")
        evals = self.client.get_metric_history(run_id, Metric.VAL_LOSS)  # every eval flushed what came before it
        return RunLog(self.client, run_id, logged_through=max((m.step for m in evals), default=-1))


class RunLog:
    """One MLflow run: buffered metrics, flushed in batches. A resumed run skips what it logged
    before it stopped (through `logged_through`): it resumes from its last checkpoint, which may
    be older than its last flushed eval, and trains those steps again to the same values.

    A run may be opened later than it is first used (`later`): metrics are buffered meanwhile,
    and whatever needs the run itself (a flush, a tag, its id) waits for it."""

    def __init__(self, client, run_id: str | None, logged_through: int = -1):
        self._client, self._run_id, self.logged_through = client, run_id, logged_through
        self._opening = None
        self.pending: list = []

    @classmethod
    def later(cls, opening) -> "RunLog":
        """The run that `opening` (with a `result()`: an opened RunLog) will give."""
        run = cls(None, None)
        run._opening = opening
        return run

    def start_opening(self) -> None:
        """Let a run opened later begin to open now (in the background)."""
        if self._opening is not None:
            self._opening.start()

    def _opened(self) -> None:
        if self._opening is not None:
            opened, self._opening = self._opening.result(), None
            self._client, self._run_id = opened.client, opened.run_id

    @property
    def client(self):
        self._opened()
        return self._client

    @property
    def run_id(self) -> str:
        self._opened()
        return self._run_id

    def params(self, params: dict[str, str]) -> None:
        self._opened()  # before any import of MLflow here: it may be importing in the background
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Buffered as plain tuples: MLflow is not imported here, since a run opened later is
        importing it in the background (two threads importing one package may each see it half done)."""
        now = int(time.time() * 1000)
        self.pending.extend((k, float(v), now, step) for k, v in values.items())

    def record(self, step: int, values: dict[str, float], kind: str) -> None:
        """The Trainer's callback: buffer every metric, write them in one batch at each eval
        (before its checkpoint, so that a resumed run's curve has no gap)."""
        if step <= self.logged_through:
            return
        self.metrics(step, values)
        if kind == "eval":
            self.flush()

    def flush(self) -> None:
        self._opened()
        from mlflow.entities import Metric as Value

        values = [Value(*m) for m in self.pending]
        for i in range(0, len(values), 1000):  # and at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=values[i : i + 1000])
        self.pending = []

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def artifacts(self, folder: Path, path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=path)

    def end(self, status: str, flush: bool = True) -> None:
        """flush=False drops the metrics since the last flush: those past the last checkpoint,
        which the resumed run logs again."""
        try:
            if flush:
                self.flush()
        finally:
            self.pending = []
            self.client.set_terminated(self.run_id, status)


def study_frame(uri: str, exp_id: str) -> "pd.DataFrame":
    """Every run of the experiment as a frame, one column per tag, param and metric (as
    `mlflow.search_runs` lays it out, without setting the process's tracking URI)."""
    import pandas as pd

    rows = [
        {
            "run_id": r.info.run_id,
            "experiment_id": r.info.experiment_id,
            "status": r.info.status,
            "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True),
            "artifact_uri": r.info.artifact_uri,
            **{metric_column(k): v for k, v in r.data.metrics.items()},
            **{param_column(k): v for k, v in r.data.params.items()},
            **{tag_column(k): v for k, v in r.data.tags.items()},
        }
        for r in client(uri).search_runs([exp_id], max_results=MANY)
    ]
    return pd.DataFrame(rows)


def history(c, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of the run's metric."""
    return [(m.step, m.value) for m in c.get_metric_history(run_id, metric)]


def final_trials(runs: "pd.DataFrame"):
    """Mask over a frame of runs: the trial runs a comparison counts (no search trials, no parent runs)."""
    variant, role, phase = (tag_column(t) for t in (Tag.VARIANT, Tag.ROLE, Tag.PHASE))
    if variant not in runs:
        return runs.index != runs.index
    mask = runs[variant].notna()
    if role in runs:  # parent runs: the study's, and each variant's
        mask &= runs[role].isna()
    if phase in runs:
        mask &= runs[phase].isna() | (runs[phase] == Phase.FINAL)
    return mask


def study_run(c, exp_id: str) -> str | None:
    """The study's parent run (stores written before there were parent runs have none)."""
    found = c.search_runs([exp_id], filter_string=f"tags.{quoted(Tag.ROLE)} = '{Role.STUDY}'", max_results=1)
    return found[0].info.run_id if found else None


def log_files(c, run_id: str, paths: list[Path], folder: str) -> None:
    for path in paths:
        c.log_artifact(run_id, str(path), artifact_path=folder)


def latest_study(c) -> str:
    """The study whose runs started most recently."""
    exps = [e for e in c.search_experiments(max_results=MANY) if Tag.STUDY in e.tags]
    if not exps:
        raise AblateError("no ablate study found in the store (run `ablate run STUDY.yaml` first)")
    runs = c.search_runs([e.experiment_id for e in exps], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise AblateError("the store holds studies but no runs yet")
    return next(e.name for e in exps if e.experiment_id == runs[0].info.experiment_id)


def _duplicate_row(e: Exception) -> bool:
    """The database refused a row that another process inserted first (SQLite's and PostgreSQL's words)."""
    return any(words in str(e) for words in ("UNIQUE constraint failed", "duplicate key value"))

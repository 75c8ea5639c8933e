"""MLflow as the results store: one experiment per study, one run per trial.

Metrics are buffered and written with `log_batch` at eval points and when a run
ends, so logging costs no per-step round trips to the store.
"""

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablate.config import DataConfig, TaskConfig
from ablate.errors import AblateError

if TYPE_CHECKING:  # the schema reads a planned study; importing it would import torch
    from ablate.plan.study import Study, Trial

TAG = "ablate."
# MLflow 3's UI opens an experiment in its GenAI mode unless told otherwise: the experiment's kind
# (a tag the UI reads) and the `workflowType` of a UI link say that a study trains models
MODEL_TRAINING = {"mlflow.experimentKind": "custom_model_development"}
# The runs table `ablate ui` opens on. MLflow's UI loads a view shared under the experiment tag
# mlflow.sharedViewState.KEY when its link says viewStateShareKey=KEY: its search, its order and
# its columns, in the order given. This one shows the final trials flat (no search trials, no
# parent runs to expand), sorted by variant, with what a comparison reads first.
VIEW_KEY = "ablate-trials"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
VIEW_COLUMNS = {  # column → its width in pixels: narrow enough that the metrics are on the first screen
    "params.`variant`": 100,
    "params.`seed`": 60,
    "metrics.`val_loss`": 90,
    "metrics.`val_accuracy`": 100,
    "params.`n_params_non_embedding`": 120,
    "params.`flops_per_token`": 110,
    "metrics.`mean_tokens_per_s`": 120,
    "attributes.`Dataset`": 170,
}


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


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested settings as MLflow params: {'model': {'d_model': 64}} → {'model.d_model': '64'}."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(value) if isinstance(value, (list, tuple)) else str(value)}


def runs_view() -> dict[str, Any]:
    """The shared view of a study's runs table, as the MLflow UI stores one (search facets and UI state)."""
    return {
        "searchFilter": f"tags.`{TAG}phase` = 'final'",
        "orderByKey": "params.`variant`",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": list(VIEW_COLUMNS),
        "columnOrder": list(VIEW_COLUMNS),
        "columnWidths": VIEW_COLUMNS,
        "runsExpanded": {},
    }


def runs_page(exp_id: str, view: bool = True) -> str:
    """The MLflow UI's path (after its address) of an experiment's runs table, in model-training
    mode, on the study's view (`runs_view`) unless the experiment predates it."""
    shared = f"viewStateShareKey={VIEW_KEY}&" if view else ""
    return f"/#/experiments/{exp_id}/runs?{shared}workflowType=machine_learning"


def run_page(exp_id: str, run_id: str) -> str:
    """The MLflow UI's path of one run."""
    return f"/#/experiments/{exp_id}/runs/{run_id}"


def grouping_tags(study: "Study", variant: str) -> dict[str, str]:
    """What a user groups and filters a variant's runs by in the MLflow UI: its mixer family,
    whether its blocks have an FFN, and the study's contrasts it is part of."""
    model = next(t.model for t in study.trials if t.variant == variant)
    contrasts = [f"{a} vs {b}" for a, b in study.config.contrasts if variant in (a, b)]
    tags = {TAG + "family": model["mixer"], TAG + "ffn": str(model["ffn"]).lower()}
    return tags | ({TAG + "contrast": "; ".join(contrasts)} if contrasts else {})


def trial_tags(study: "Study", trial: "Trial", meta: dict, leak: float) -> dict[str, str]:
    """The tags of a trial's run: what it is (study, variant, seed, trial key, data), whether it is causal."""
    from ablate.audit import is_causal

    return {
        TAG + "study": study.name,
        TAG + "variant": trial.variant,
        TAG + "seed": str(trial.seed),
        TAG + "trial_key": trial.key(study.config.data),
        TAG + "data_fingerprint": meta["fingerprint"],
        TAG + "python_version": meta["python_version"],
        TAG + "causal": str(is_causal(leak)).lower(),
        TAG + "max_leak": f"{leak:.3e}",
        **grouping_tags(study, trial.variant),
        **({TAG + "scaled": trial.scaled, TAG + "size": f"{trial.size:.12g}"} if trial.scaled else {}),
    }


def trial_params(study: "Study", trial: "Trial", meta: dict, device: str) -> dict[str, str]:
    """The params of a trial's run: its whole configuration, its data and its sizes."""
    budget = study.config.budget
    if budget is not None and trial.size is not None:
        budget = budget.at(trial.size)
    return {
        **flatten("model", trial.model),
        **flatten("train", trial.train),
        **flatten("data", study.config.data.model_dump()),
        "data.fingerprint": meta["fingerprint"],
        "data.unigram_entropy": f"{meta['unigram_entropy']:.6f}",
        **({"data.chance_accuracy": f"{meta['chance_accuracy']:.6f}"} if "chance_accuracy" in meta else {}),
        "variant": trial.variant,
        "seed": str(trial.seed),
        "n_params": str(trial.n_params),
        "n_params_non_embedding": str(trial.n_params_non_embedding),
        "flops_per_token": f"{trial.flops_per_token:.0f}",
        "budget": budget.describe() if budget else "none",
        "state_size": str(trial.state_size),
        "device": device,
    }


def dataset(meta: dict, data: DataConfig | TaskConfig):
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
        profile = {"tokenizer": tokenizer, "vocab_size": meta["vocab_size"]}
        profile |= {k: meta[k] for k in ("n_train_tokens", "n_val_tokens") if k in meta}
    return Dataset(
        name=name,
        digest=meta["fingerprint"],
        source_type=kind,
        source=json.dumps(source),
        profile=json.dumps(profile),
    )


class Tracker:
    def __init__(self, uri: str, results: Path):
        self.uri, self.results = uri, results
        self.client = client(uri)

    def experiment(
        self,
        name: str,
        baseline: str,
        variants: list[str],
        contrasts: list | None = None,
        expect: list | None = None,
        budget: dict | None = None,
    ) -> str:
        """The study's experiment, created on first use with its artifacts under results/; its tags
        carry what `compare` needs of the study: baseline, variant order, contrasts, expectations,
        and the budget that was held equal."""
        exp_id = self.experiment_id(name)
        self.client.set_experiment_tag(exp_id, TAG + "study", name)
        self.client.set_experiment_tag(exp_id, TAG + "baseline", baseline)
        self.client.set_experiment_tag(exp_id, TAG + "variants", json.dumps(variants))
        self.client.set_experiment_tag(exp_id, TAG + "contrasts", json.dumps(contrasts or []))
        self.client.set_experiment_tag(exp_id, TAG + "expect", json.dumps(expect or []))
        self.client.set_experiment_tag(exp_id, TAG + "budget", json.dumps(budget))
        for key, value in MODEL_TRAINING.items():
            self.client.set_experiment_tag(exp_id, key, value)
        self.client.set_experiment_tag(exp_id, VIEW_TAG, json.dumps(runs_view()))
        return exp_id

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created on first use with its artifacts under results/ (for a
        local store)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            location = (self.results.resolve() / "artifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def finished_trials(self, exp_id: str) -> dict[str, tuple[str, dict[str, float]]]:
        """trial key → (run id, final metrics) of the final-phase trials that have a FINISHED run."""
        runs = self.client.search_runs([exp_id], filter_string="attributes.status = 'FINISHED'", max_results=50_000)
        return {
            r.data.tags[TAG + "trial_key"]: (r.info.run_id, r.data.metrics)
            for r in runs
            if TAG + "trial_key" in r.data.tags and r.data.tags.get(TAG + "phase", "final") == "final"
        }

    def parent(self, exp_id: str, role: str, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        """The run that groups others in the MLflow UI (role study, or variant), made once and
        reused by every later run of the study."""
        query = f"tags.`{TAG}role` = '{role}'" + "".join(f" and tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self.client.search_runs([exp_id], filter_string=query, max_results=1)
        if found:
            return found[0].info.run_id
        nest = {"mlflow.parentRunId": parent_id} if parent_id else {}
        return self.client.create_run(exp_id, run_name=name, tags={TAG + "role": role, **tags, **nest}).info.run_id

    def log_dataset(self, run_id: str, meta: dict, data) -> None:
        """The run's data as an MLflow dataset input (the runs table's Dataset column, the run
        page's Datasets): named by its source, its digest the data's fingerprint, its profile
        the tokenizer and the token counts."""
        from mlflow.entities import DatasetInput, InputTag

        used = DatasetInput(dataset(meta, data), [InputTag("mlflow.data.context", "train")])
        self.client.log_inputs(run_id, datasets=[used])

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_final(self, run_id: str, values: dict[str, float]) -> None:
        """Metrics of a run that has no curve (a parent's aggregates), at step 0."""
        log = RunLog(self.client, run_id)
        log.metrics(0, values)
        log.flush()

    def set_status(self, run_id: str, status: str) -> None:
        self.client.update_run(run_id, status=status)

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
        evals = self.client.get_metric_history(run_id, "val_loss")  # every eval flushed what came before it
        return RunLog(self.client, run_id, logged_through=max((m.step for m in evals), default=-1))


class RunLog:
    """One MLflow run: buffered metrics, flushed in batches. A resumed run skips what it logged
    before it stopped (through `logged_through`): it resumes from its last checkpoint, which may
    be older than its last flushed eval, and trains those steps again to the same values."""

    def __init__(self, client, run_id: str, logged_through: int = -1):
        self.client, self.run_id, self.logged_through = client, run_id, logged_through
        self.pending: list = []

    def params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in values.items())

    def record(self, step: int, values: dict[str, float], kind: str) -> None:
        """The Trainer's callback: buffer every metric, write them in one batch at each eval
        (before its checkpoint, so that a resumed run's curve has no gap)."""
        if step <= self.logged_through:
            return
        self.metrics(step, values)
        if kind == "eval":
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):  # and at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
        self.pending = []

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def end(self, status: str, flush: bool = True) -> None:
        """flush=False drops the metrics since the last flush: those past the last checkpoint,
        which the resumed run logs again."""
        try:
            if flush:
                self.flush()
        finally:
            self.pending = []
            self.client.set_terminated(self.run_id, status)


def final_trials(runs):
    """Mask over a frame of runs: the trial runs a comparison counts (no search trials, no parent runs)."""
    if "tags.ablate.variant" not in runs:
        return runs.index != runs.index
    mask = runs["tags.ablate.variant"].notna()
    if "tags.ablate.role" in runs:  # parent runs: the study's, and each variant's
        mask &= runs["tags.ablate.role"].isna()
    if "tags.ablate.phase" in runs:
        mask &= runs["tags.ablate.phase"].isna() | (runs["tags.ablate.phase"] == "final")
    return mask


def study_run(c, exp_id: str) -> str | None:
    """The study's parent run (stores written before there were parent runs have none)."""
    found = c.search_runs([exp_id], filter_string=f"tags.`{TAG}role` = 'study'", max_results=1)
    return found[0].info.run_id if found else None


def latest_study(c) -> str:
    """The study whose runs started most recently."""
    exps = [e for e in c.search_experiments(max_results=50_000) if TAG + "study" in e.tags]
    if not exps:
        raise AblateError("no ablate study found in the store (run `ablate run STUDY.yaml` first)")
    runs = c.search_runs([e.experiment_id for e in exps], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise AblateError("the store holds studies but no runs yet")
    return next(e.name for e in exps if e.experiment_id == runs[0].info.experiment_id)

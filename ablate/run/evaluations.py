"""`ablate import`, `ablate export` and `ablate eval`: a model across ablate's border, and what it is
worth, measured the same way for every model.

`import strawberry`, `import nanogpt` and `import hf` (a folder `export` wrote) record a
checkpoint as a finished run with its model artifacts (`ablate.importers` reads it). `eval` takes
any run with a saved model (a finished final trial or an import) and measures, on data it names:
val_loss and val_accuracy, the causality audit and, for a model that leaks, the honest
prefix_val_loss beside the teacher-forced loss at the same positions. The result is an evaluation
run, nested under the run it evaluates.
"""

import hashlib
import tempfile
from pathlib import Path

from ablate import importers
from ablate.core.config import DataConfig
from ablate.core.errors import AblateError
from ablate.core.schema import Metric, Param, Role, Tag
from ablate.inference import audit, sample
from ablate.nn import devices
from ablate.tracking.records import flatten
from ablate.tracking.store import Tracker
from ablate.train import evaluation


def import_checkpoint(uri: str, results: Path, kind: str, path: Path, experiment: str) -> str:
    """Record another trainer's checkpoint as a finished run with its model (for eval and sample)
    in the store at `uri`, opened once the checkpoint has been read; its run id."""
    imported = importers.importer(kind).imported(path)
    tracker = Tracker(uri, results)
    model = imported.model.float()
    tags = {Tag.ROLE: Role.IMPORT, Tag.SOURCE_CHECKPOINT: str(path.resolve()), Tag.CAUSAL: str(model.causal).lower()}
    settings = {k: v for section, values in imported.settings.items() for k, v in flatten(section, values).items()}
    params = settings | {
        **flatten(Param.MODEL, model.cfg.model_dump()),
        "checkpoint_sha256": hashlib.sha256(imported.identity.read_bytes()).hexdigest(),
        "checkpoint_step": str(imported.step),
        Param.N_PARAMS: str(model.n_params()),
        Param.N_PARAMS_NON_EMBEDDING: str(model.n_params(non_embedding=True)),
    }
    run = tracker.start(tracker.experiment_id(experiment), f"{kind}-{path.stem}", tags, params)
    if imported.reported:
        run.metrics(imported.step, imported.reported)
    sample.save(run, model, model.cfg, tokenizer=imported.tokenizer)
    run.end("FINISHED")
    return run.run_id


def export_run(client, run_id: str, folder: Path, force: bool) -> None:
    """The run's saved model (a finished final trial's or an import's) as a Hugging Face folder at
    `folder`, with its tokenizer and a model card."""
    from ablate.hf.card import card
    from ablate.hf.folder import check_destination, write

    check_destination(folder, force)
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = sample.load(client, run_id, Path(tmp))
        write(model, sample.tokenizer_file(Path(tmp)), folder, card(client.get_run(run_id), folder.name), force)


def eval_data(client, run_id: str, data: str | None, vocab_size: int, results: Path, folder: Path):
    """The data to evaluate on: `data` (a study YAML, whose data section is taken, or a token
    array of the model's vocabulary), else the data of the study the run trained in."""
    from ablate.data import open_source
    from ablate.plan import study as study_mod

    if data is None:
        if "study.yaml" not in {a.path for a in client.list_artifacts(run_id)}:
            raise AblateError(
                f"run {run_id} records no data it trained on: give --data (a study YAML or a token array)"
            )
        study_file = Path(client.download_artifacts(run_id, "study.yaml", str(folder)))
        base = Path(client.get_run(run_id).data.tags.get(Tag.STUDY_DIR, "."))  # where its relative paths start
        try:
            config = study_mod.load(study_file, base_dir=base).config.data
        except AblateError as e:
            raise AblateError(f"run {run_id}'s study names data this machine cannot read ({e}); give --data") from None
    elif Path(data).suffix in (".yaml", ".yml"):
        config, base = study_mod.load(data).config.data, Path(data).parent
    elif Path(data).suffix in (".npy", ".bin"):
        config = DataConfig(source=str(Path(data).resolve()), vocab_size=vocab_size)
        base = Path(".")
    else:
        raise AblateError(
            f"--data {data}: give a study YAML (its data section is used) or a token array (.npy, .bin of uint16) "
            "tokenized as the model was trained; a text file would need the model's own tokenizer"
        )
    corpus = open_source(config, results / "cache", base)
    trained_on = client.get_run(run_id).data.tags.get(Tag.DATA_FINGERPRINT)
    if data is None and trained_on != corpus.meta.fingerprint:
        raise AblateError(f"run {run_id} trained on other data than its study names (run with --data?): give --data")
    return corpus


def score(model, corpus, batch_size: int, batches: int, device: str) -> dict[str, float]:
    """val_loss and val_accuracy; max_leak from the audit; for a leaking model, prefix_val_loss
    (each position predicted from its own prefix alone) and the teacher-forced loss beside it."""
    if corpus.meta.vocab_size > model.cfg.vocab_size:
        raise AblateError(
            f"the data's vocabulary ({corpus.meta.vocab_size}) is larger than the model's ({model.cfg.vocab_size})"
        )
    val = corpus.val_batches(model.cfg.context, batch_size, batches)
    if val and val[0][0].shape[1] > model.cfg.context:
        raise AblateError(
            f"the data's sequences are {val[0][0].shape[1]} tokens, longer than the model's context "
            f"{model.cfg.context}: evaluate on data of seq_len ≤ {model.cfg.context}"
        )
    model.to(devices.device_named(device))
    leak = audit.model_leak(model)
    metrics = evaluation.val_metrics(model, val) | {Metric.MAX_LEAK: leak}
    if not audit.is_causal(leak):
        metrics |= evaluation.prefix_losses(model, val[0])
    return metrics


def log_evaluation(tracker: Tracker, run_id: str, metrics: dict[str, float], params: dict[str, str]) -> str:
    """An evaluation run in the evaluated run's experiment, nested under it; its run id."""
    source = tracker.client.get_run(run_id)
    tags = {
        Tag.ROLE: Role.EVALUATION,
        Tag.EVALUATES: run_id,
        Tag.CAUSAL: str(audit.is_causal(metrics[Metric.MAX_LEAK])).lower(),
        Tag.MAX_LEAK: f"{metrics[Metric.MAX_LEAK]:.3e}",
    }
    run = tracker.start(source.info.experiment_id, f"eval-{source.info.run_name}", tags, params, parent_id=run_id)
    run.metrics(0, metrics)
    run.end("FINISHED")
    return run.run_id


def load_model(client, run_id: str):
    """The run's saved model (eval mode, on the CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = sample.load(client, run_id, Path(tmp))
    return model


def print_result(metrics: dict[str, float]) -> None:
    """`ablate eval`'s lines: the losses, and what the audit says they are worth."""
    print(f"val_loss {metrics[Metric.VAL_LOSS]:.4f}   val_accuracy {metrics[Metric.VAL_ACCURACY]:.4f}")
    if Metric.PREFIX_VAL_LOSS not in metrics:
        print(f"audit: causal (largest logit change {metrics[Metric.MAX_LEAK]:.1e} where none may move)")
        return
    print(
        f"audit: LEAKS (a logit moved by {metrics[Metric.MAX_LEAK]:.2e} when only tokens it must not see changed): "
        "its teacher-forced losses are not next-token losses"
    )
    print(
        f"prefix_val_loss {metrics[Metric.PREFIX_VAL_LOSS]:.4f} (honest: each position from its own prefix alone)   "
        f"val_loss_at_prefix_positions {metrics[Metric.VAL_LOSS_AT_PREFIX_POSITIONS]:.4f} (teacher-forced, same "
        "positions)"
    )

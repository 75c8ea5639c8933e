"""`ablate import` and `ablate eval`: what a model is worth, measured the same way for every model.

`import strawberry`, `import nanogpt` and `import hf` (a folder `ablate export` wrote) record a
checkpoint as a finished run with its model artifacts. `eval` takes any run with a saved model (a finished final trial or an import) and measures,
on data it names: val_loss and val_accuracy, the causality audit and, for a model that
leaks, the honest prefix_val_loss beside the teacher-forced loss at the same positions. The
result is an evaluation run, nested under the run it evaluates.
"""

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ablate import audit, checkpoints, nanogpt, sample, strawberry
from ablate.config import DataConfig
from ablate.errors import AblateError
from ablate.model import LanguageModel
from ablate.nn import devices
from ablate.schema import Metric, Param, Role, Tag
from ablate.tracking.records import flatten
from ablate.tracking.store import Tracker
from ablate.train import evaluation


@dataclass
class Imported:
    """What an importer reads off a checkpoint: the model, the checkpoint's own settings (params),
    its step, the losses it reports, its tokenizer file (None where it has none) and the file whose
    hash identifies it."""

    model: LanguageModel
    params: dict[str, str]
    step: int
    reported: dict[str, float]
    identity: Path
    tokenizer: Path | None = None


def _strawberry(path: Path) -> Imported:
    """A Strawberry checkpoint (scope batch, as published): its model, its hyperparams and step,
    and Strawberry's own last loss estimates (from its leaking forward pass)."""
    checkpoint = strawberry.read_checkpoint(path)
    stats = checkpoint.get("stats") if isinstance(checkpoint.get("stats"), dict) else {}
    reported = {
        Metric.REPORTED.format(split): checkpoints.number(losses[-1], f"stats.loss.{split}")
        for split, losses in (stats.get("loss") or {}).items()
        if split in ("train", "val") and len(losses)
    }
    params = flatten("hyperparams", checkpoint["hyperparams"])
    step = checkpoints.number(stats.get("step", 0), "stats.step", int)
    return Imported(strawberry.load_strawberry(checkpoint), params, step, reported, path)


def _nanogpt(path: Path) -> Imported:
    """A nanoGPT checkpoint: its model, its model_args and iteration, and its best val loss."""
    checkpoint = nanogpt.read_checkpoint(path)
    best = checkpoint.get("best_val_loss")
    reported = {Metric.REPORTED.format("val"): checkpoints.number(best, "best_val_loss")} if best is not None else {}
    params = flatten("model_args", checkpoint["model_args"])
    step = checkpoints.number(checkpoint.get("iter_num", 0), "iter_num", int)
    return Imported(nanogpt.load_nanogpt(checkpoint), params, step, reported, path)


def _hf(path: Path) -> Imported:
    """A folder `ablate export` wrote (its model and tokenizer), as Hugging Face holds it."""
    from ablate.hf import folder

    model, tokenizer = folder.read(path)
    params = flatten("hf", {k: v for k, v in json.loads((path / "config.json").read_text()).items() if k != "ablate"})
    return Imported(model, params, 0, {}, path / folder.WEIGHTS, tokenizer)


IMPORTERS = {"strawberry": _strawberry, "nanogpt": _nanogpt, "hf": _hf}


def import_checkpoint(uri: str, results: Path, kind: str, path: Path, experiment: str) -> str:
    """Record another trainer's checkpoint as a finished run with its model (for eval and sample)
    in the store at `uri`, opened once the checkpoint has been read; its run id."""
    imported = IMPORTERS[kind](path)
    tracker = Tracker(uri, results)
    model = imported.model.float()
    tags = {Tag.ROLE: Role.IMPORT, Tag.SOURCE_CHECKPOINT: str(path.resolve()), Tag.CAUSAL: str(model.causal).lower()}
    params = imported.params | {
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


def evaluate(model, corpus, batch_size: int, batches: int, device: str) -> dict[str, float]:
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
    metrics = evaluation.evaluate(model, val) | {Metric.MAX_LEAK: leak}
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

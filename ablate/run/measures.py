"""What a final trial's model is measured on once trained, where its study asks, each logged on
its run: what it costs to decode from its state (`decode:`), its loss at other lengths
(`eval.contexts`), lm-evaluation-harness's tasks (`eval.lm_eval`)."""

from collections.abc import Callable

from ablate.core.schema import Tag
from ablate.data.tasks import TaskData
from ablate.inference import cost, harness, lengths
from ablate.run.prepare import PreparedStudy
from ablate.tracking.store import RunLog
from ablate.train.trainer import Trainer


def after_training(p: PreparedStudy, say: Callable[[str], None], label: str, trainer: Trainer, run: RunLog) -> None:
    """Every measure the study asks of the trained model (`say` prints a line of progress)."""
    for measure in (decode, lengths_past, lm_eval):
        measure(p, say, label, trainer, run)


def decode(p: PreparedStudy, say: Callable[[str], None], label: str, trainer: Trainer, run: RunLog) -> None:
    """Where the study asks (`decode:`), what the trained model costs to run, logged on its run."""
    asked = p.study.config.decode
    if asked is None:
        return
    say(f"{label}: decoding from its state at {', '.join(map(str, asked.contexts))}")
    row = cost.measure(trainer.model, tuple(asked.contexts), asked.steps)
    run.metrics(trainer.cfg.steps, cost.metrics(row))
    if row["stopped"]:
        say(f"{label}: decoding stopped {row['stopped']}")
        run.tag(Tag.DECODE_STOPPED, row["stopped"])
    trainer.model.train()


def lengths_past(p: PreparedStudy, say: Callable[[str], None], label: str, trainer: Trainer, run: RunLog) -> None:
    """Where the study asks (`eval.contexts`, or a task's `eval_seq_lens`), the trained model
    scored at each length, logged on its run."""
    data, cfg, asked = p.data, trainer.cfg, p.study.config.eval
    if isinstance(data, TaskData):
        longer = data.cfg.eval_seq_lens
        asked = None if longer is None else [data.cfg.seq_len, *longer]
    else:
        asked = None if asked is None else asked.contexts
    if asked is None:
        return
    say(f"{label}: scored at {', '.join(map(str, asked))} tokens")
    batch_tokens = cfg.batch_size * trainer.context
    metrics, _, stopped = lengths.scores(trainer.model, data, tuple(asked), batch_tokens, cfg.eval_batches)
    run.metrics(cfg.steps, metrics)
    run.tag(Tag.LENGTH_METHOD, lengths.METHOD)
    if stopped:
        run.tag(Tag.LENGTH_STOPPED, stopped)


def lm_eval(p: PreparedStudy, say: Callable[[str], None], label: str, trainer: Trainer, run: RunLog) -> None:
    """Where the study asks (`eval.lm_eval`), lm-evaluation-harness's scores of the trained model, logged on its run."""
    asked = p.study.config.eval
    if asked is None or asked.lm_eval is None:
        return
    say(f"{label}: lm-eval on {', '.join(asked.lm_eval)}")
    include = harness.include_folder(asked, p.study.path.parent)
    metrics = harness.lm_eval_scores(
        trainer.model, p.data.tokenizer_path, asked.lm_eval, include, asked.limit, trainer.device
    )
    run.metrics(trainer.cfg.steps, metrics)
    trainer.model.train()

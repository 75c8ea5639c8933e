"""Run a planned study: prepare the data once, then train each trial into its own MLflow run."""

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ablate import audit, data, tracking
from ablate.model import build_model
from ablate.study import Study, Trial
from ablate.trainer import TrainConfig, Trainer, seed_everything


@dataclass
class Outcome:
    trial: Trial
    status: str  # FINISHED, SKIPPED (finished earlier), KILLED, FAILED
    metrics: dict = field(default_factory=dict)


def run_study(
    study: Study, results: Path, uri: str, console: Console | None = None, store_args: str = ""
) -> list[Outcome]:
    console = console or Console()
    leaks = audit.audit_study(study)
    audit.refuse_leaks(study, leaks)
    leaky = audit.leaking(leaks)
    console.print(
        f"audit: {len(leaks) - len(leaky)} of {len(leaks)} variants causal"
        + (f"; leaking (allowed by allow_leaky): {', '.join(leaky)}" if leaky else "")
    )
    results.mkdir(parents=True, exist_ok=True)
    tracker = tracking.Tracker(uri, results)

    start = time.perf_counter()
    corpus = data.prepare(study.config.data, results / "cache", study.path.parent)
    meta = corpus.meta
    how = "built" if corpus.built else "loaded from cache"
    console.print(
        f"data: {meta['source']} — {meta['n_train_tokens']:,} train / {meta['n_val_tokens']:,} val tokens, "
        f"vocab {meta['vocab_size']}, fingerprint {meta['fingerprint']}; tokenizer and splits {how} "
        f"in {time.perf_counter() - start:.1f}s (build took {meta['build_s']:.1f}s)"
    )

    exp_id = tracker.experiment(study.name, study.baseline, [v.name for v in study.config.variants])
    done = tracker.finished_trials(exp_id)
    todo, outcomes = [], []
    for trial in study.trials:
        key = trial.key(study.config.data)
        if key in done:
            outcomes.append(Outcome(trial, "SKIPPED", done[key]))
        else:
            todo.append(trial)
    if outcomes:
        console.print(
            f"{len(outcomes)} of {len(study.trials)} trials already finished in the store; running the other {len(todo)}"
        )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        overall = progress.add_task("study", total=sum(t.train["steps"] for t in todo), loss="", speed="")
        for i, trial in enumerate(todo, 1):
            label = f"trial {i}/{len(todo)} {trial.variant} seed {trial.seed}"
            task = progress.add_task(label, total=trial.train["steps"], loss="-", speed="-")
            leak = leaks[trial.variant]
            outcomes.append(_run_trial(study, trial, leak, corpus, tracker, exp_id, progress, task, overall))
            progress.remove_task(task)
            progress.console.print(f"{label}: val_loss {outcomes[-1].metrics['val_loss']:.4f}")

    _summary(study, outcomes, meta, results, uri, time.perf_counter() - start, console, store_args)
    return outcomes


def _run_trial(study, trial, leak, corpus, tracker, exp_id, progress, task, overall) -> Outcome:
    seed_everything(trial.seed)
    model = build_model(trial.model)
    trainer = Trainer(model, corpus, TrainConfig(**trial.train), trial.seed, prefix_eval=not audit.is_causal(leak))
    tags = {
        tracking.TAG + "study": study.name,
        tracking.TAG + "variant": trial.variant,
        tracking.TAG + "seed": str(trial.seed),
        tracking.TAG + "trial_key": trial.key(study.config.data),
        tracking.TAG + "data_fingerprint": corpus.meta["fingerprint"],
        tracking.TAG + "python_version": corpus.meta["python_version"],
        tracking.TAG + "causal": str(audit.is_causal(leak)).lower(),
        tracking.TAG + "max_leak": f"{leak:.3e}",
    }
    params = {
        **tracking.flatten("model", trial.model),
        **tracking.flatten("train", trial.train),
        **tracking.flatten("data", study.config.data.model_dump()),
        "data.fingerprint": corpus.meta["fingerprint"],
        "data.unigram_entropy": f"{corpus.meta['unigram_entropy']:.6f}",
        "variant": trial.variant,
        "seed": str(trial.seed),
        "n_params": str(trial.n_params),
        "n_params_non_embedding": str(trial.n_params_non_embedding),
        "flops_per_token": f"{trial.flops_per_token:.0f}",
        "state_size": str(trial.state_size),
        "device": str(trainer.device),
    }
    run = tracker.start(exp_id, f"{trial.variant}-seed{trial.seed}", tags, params)
    run.text(study.text, "study.yaml")
    last_step = 0

    def on_metrics(step: int, metrics: dict[str, float], kind: str) -> None:
        nonlocal last_step
        run.metrics(step, metrics)
        if kind == "eval":
            run.flush()
        else:
            progress.update(
                task, completed=step, loss=f"{metrics['train_loss']:.3f}", speed=f"{metrics['tokens_per_s']:,.0f}"
            )
            progress.advance(overall, step - last_step)
            last_step = step

    status = "FAILED"
    try:
        final = trainer.fit(on_metrics)
        run.metrics(trial.train["steps"], {k: final[k] for k in ("train_time_s", "mean_tokens_per_s")})
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        run.end(status)
    return Outcome(trial, status, final)


def _summary(study, outcomes, meta, results, uri, elapsed, console, store_args) -> None:
    table = Table(title=f"study {study.name}")
    leaky = any("prefix_val_loss" in o.metrics for o in outcomes)
    columns = ["variant", "seed", "params (non-emb)", "val_loss"] + ["prefix_val_loss"] * leaky + ["tokens/s", "status"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("variant", "status") else "right")
    for o in outcomes:
        m = o.metrics
        prefix = [f"{m['prefix_val_loss']:.4f}" if "prefix_val_loss" in m else "-"] * leaky
        table.add_row(
            o.trial.variant,
            str(o.trial.seed),
            f"{o.trial.n_params:,} ({o.trial.n_params_non_embedding:,})",
            f"{m['val_loss']:.4f}" if m else "-",
            *prefix,
            f"{m['mean_tokens_per_s']:,.0f}" if m else "-",
            o.status.lower(),
        )
    console.print(table)
    if leaky:
        console.print(
            "prefix_val_loss: leaking variants' loss with each position predicted from its own prefix alone "
            "(the honest next-token loss; val_loss is teacher-forced and sees what it must not)"
        )
    console.print(
        f"unigram entropy of the train tokens: {meta['unigram_entropy']:.4f} nats/token "
        "(the loss of a model that ignores context; val losses should sit far below it)"
    )
    console.print(f"study wall time: {elapsed:.0f}s")
    console.print(
        f"results: {uri}" + ("" if not uri.startswith("sqlite") else f" (artifacts under {results / 'artifacts'})")
    )
    console.print(f"compare: ablate compare{store_args} --study {study.name} --metric val_loss")
    console.print(f"browse:  ablate ui{store_args}")

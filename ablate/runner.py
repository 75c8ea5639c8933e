"""Run a planned study: prepare the data once, then train each trial into its own MLflow run."""

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ablate import audit, data, search, tracking
from ablate.errors import AblateError
from ablate.model import build_model
from ablate.search import SearchConfig
from ablate.study import Study, Trial
from ablate.trainer import TrainConfig, Trainer, seed_everything


@dataclass
class Outcome:
    trial: Trial
    status: str  # FINISHED, SKIPPED (finished earlier), KILLED, FAILED
    metrics: dict = field(default_factory=dict)


def run_study(
    study: Study,
    results: Path,
    uri: str,
    console: Console | None = None,
    store_args: str = "",
    storage: str | None = None,
) -> list[Outcome]:
    """Search where a variant asks for it (Optuna storage: `storage`, default RESULTS/optuna.db),
    then train every final trial not finished yet, each into its own MLflow run."""
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
    storage = storage or f"sqlite:///{results.resolve() / 'optuna.db'}"

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
    study_run = tracker.parent(exp_id, "study", study.name, {tracking.TAG + "study": study.name})
    parents = {
        v.name: tracker.parent(exp_id, "variant", v.name, {tracking.TAG + "variant": v.name}, study_run)
        for v in study.config.variants
    }
    runs = Runs(study, leaks, corpus, tracker, exp_id, parents)
    status = "FAILED"
    try:
        with Progress(*PROGRESS_COLUMNS, console=console) as progress:
            runs.progress = progress
            best = {variant: _search(runs, variant, config, storage) for variant, config in study.searches.items()}
            trials = [replace(t, train={**t.train, **best[t.variant]}) if t.search else t for t in study.trials]

            done = tracker.finished_trials(exp_id)
            todo, outcomes = [], []
            for trial in trials:
                key = trial.key(study.config.data)
                if key in done:
                    outcomes.append(Outcome(trial, "SKIPPED", done[key]))
                else:
                    todo.append(trial)
            if outcomes:
                progress.console.print(
                    f"{len(outcomes)} of {len(trials)} trials already finished in the store; running the other {len(todo)}"
                )
            runs.overall = progress.add_task("study", total=sum(t.train["steps"] for t in todo), loss="", speed="")
            for i, trial in enumerate(todo, 1):
                label = f"trial {i}/{len(todo)} {trial.variant} seed {trial.seed}"
                outcomes.append(runs.train(trial, label, {tracking.TAG + "phase": "final"}))
                progress.console.print(f"{label}: val_loss {outcomes[-1].metrics['val_loss']:.4f}")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for run_id in (study_run, *parents.values()):
            tracker.set_status(run_id, status)

    _summary(study, outcomes, meta, results, uri, time.perf_counter() - start, console, store_args)
    return outcomes


PROGRESS_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
    TextColumn("loss {task.fields[loss]}"),
    TextColumn("{task.fields[speed]} tok/s"),
    TimeElapsedColumn(),
    TextColumn("ETA"),
    TimeRemainingColumn(),
)


STATE = tracking.TAG + "optuna_state"  # the Optuna state a search trial's run ended in


class Pruned(Exception):
    """Raised from an eval callback to stop a search trial that its pruner gave up on."""


@dataclass
class Runs:
    """What every trial run of a study shares: trains one trial into one MLflow run."""

    study: Study
    leaks: dict[str, float]
    corpus: data.Corpus
    tracker: tracking.Tracker
    exp_id: str
    parents: dict[str, str]
    progress: Progress | None = None
    overall: int | None = None
    last_run: tracking.RunLog | None = None  # the run `train` made last, to tag after it ended

    def train(self, trial: Trial, label: str, tags: dict[str, str], on_eval=None) -> Outcome:
        """Train the trial; on_eval(step, val_loss) may raise Pruned to stop it early."""
        study, leak = self.study, self.leaks[trial.variant]
        self.last_run = None
        seed_everything(trial.seed)
        model = build_model(trial.model)
        config = TrainConfig(**trial.train)
        trainer = Trainer(model, self.corpus, config, trial.seed, prefix_eval=not audit.is_causal(leak))
        tags = {
            tracking.TAG + "study": study.name,
            tracking.TAG + "variant": trial.variant,
            tracking.TAG + "seed": str(trial.seed),
            tracking.TAG + "trial_key": trial.key(study.config.data),
            tracking.TAG + "data_fingerprint": self.corpus.meta["fingerprint"],
            tracking.TAG + "python_version": self.corpus.meta["python_version"],
            tracking.TAG + "causal": str(audit.is_causal(leak)).lower(),
            tracking.TAG + "max_leak": f"{leak:.3e}",
            **tags,
        }
        params = {
            **tracking.flatten("model", trial.model),
            **tracking.flatten("train", trial.train),
            **tracking.flatten("data", study.config.data.model_dump()),
            "data.fingerprint": self.corpus.meta["fingerprint"],
            "data.unigram_entropy": f"{self.corpus.meta['unigram_entropy']:.6f}",
            "variant": trial.variant,
            "seed": str(trial.seed),
            "n_params": str(trial.n_params),
            "n_params_non_embedding": str(trial.n_params_non_embedding),
            "flops_per_token": f"{trial.flops_per_token:.0f}",
            "state_size": str(trial.state_size),
            "device": str(trainer.device),
        }
        number = tags.get(tracking.TAG + "optuna_trial")
        name = f"{trial.variant}-search{number}" if number is not None else f"{trial.variant}-seed{trial.seed}"
        run = self.tracker.start(self.exp_id, name, tags, params, parent_id=self.parents[trial.variant])
        run.text(study.text, "study.yaml")
        self.last_run = run
        task = self.progress.add_task(label, total=config.steps, loss="-", speed="-")
        last_step = 0

        def on_metrics(step: int, metrics: dict[str, float], kind: str) -> None:
            nonlocal last_step
            run.metrics(step, metrics)
            if kind == "eval":
                run.flush()
                if on_eval is not None:
                    on_eval(step, metrics["val_loss"])
                return
            self.progress.update(
                task, completed=step, loss=f"{metrics['train_loss']:.3f}", speed=f"{metrics['tokens_per_s']:,.0f}"
            )
            if self.overall is not None and on_eval is None:
                self.progress.advance(self.overall, step - last_step)
            last_step = step

        status = "FAILED"
        try:
            final = trainer.fit(on_metrics)
            run.metrics(config.steps, {k: final[k] for k in ("train_time_s", "mean_tokens_per_s")})
            status = "FINISHED"
        except Pruned:
            status = "FINISHED"  # stopped on purpose: its curve up to here is kept
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            run.end(status)
            self.progress.remove_task(task)
        return Outcome(trial, status, final)


def _search(runs: Runs, variant: str, config: SearchConfig, storage: str) -> dict:
    """Run the variant's Optuna search up to its trial count (resuming one begun earlier), each
    trial a nested MLflow run tagged with its phase, Optuna number and state; return the best setting."""
    import optuna

    name = f"{runs.study.name}/{variant}"
    optuna_study = search.open_study(name, storage, config)
    base = next(t for t in runs.study.trials if t.variant == variant)
    base = replace(base, seed=runs.study.config.seeds[0])  # every search trial sees the same data and init
    console = runs.progress.console
    todo = search.remaining(optuna_study, config)
    console.print(f"search {variant}: {len(optuna_study.trials)} of {config.trials} trials in {name}; running {todo}")

    def objective(trial: optuna.Trial) -> float:
        params = {key: d.suggest(trial, key) for key, d in config.space.items()}
        trial_run = replace(base, train=config.train(base.train, params))

        def report(step: int, val_loss: float) -> None:
            trial.report(val_loss, step)
            if trial.should_prune():
                raise Pruned

        tags = {
            tracking.TAG + "phase": "search",
            tracking.TAG + "optuna_study": name,
            tracking.TAG + "optuna_trial": str(trial.number),
        }
        label = f"search {variant} #{trial.number}"
        setting = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        try:
            outcome = runs.train(trial_run, label, tags, on_eval=report)
        except Pruned:
            runs.last_run.tag(STATE, "PRUNED")
            console.print(f"{label}: {setting} → pruned")
            raise optuna.TrialPruned from None
        except Exception:
            if runs.last_run is not None:
                runs.last_run.tag(STATE, "FAIL")
            raise
        loss = outcome.metrics["val_loss"]
        runs.last_run.tag(STATE, "COMPLETE" if math.isfinite(loss) else "FAIL")
        console.print(f"{label}: {setting} → val_loss {loss:.4f}")
        return loss

    if todo:
        optuna_study.optimize(
            objective,
            n_trials=todo,
            catch=(RuntimeError, FloatingPointError),
            callbacks=[optuna.study.MaxTrialsCallback(config.trials, states=None)],
        )
    complete = [t for t in optuna_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise AblateError(f"search {name}: no trial completed, so there is no best setting to train with")
    best = optuna_study.best_trial
    console.print(f"search {variant}: best val_loss {best.value:.4f} with {best.params} (trial {best.number})")
    for key, value in best.params.items():  # tags, not params: a resumed search may find a better value
        runs.tracker.client.set_tag(runs.parents[variant], f"{tracking.TAG}best.{key}", str(value))
    return best.params


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

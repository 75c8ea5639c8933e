"""One unit of work → one MLflow run: a final trial (with its variant's best searched setting)
or a search trial (asked of Optuna, pruned on its evals, told how it ended), trained by the
shared Trainer and resumed from the run and checkpoint an earlier holder of its claim left."""

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from rich.progress import Progress

from ablate.core.errors import Terminated
from ablate.core.schema import Metric, Phase, Tag
from ablate.data import DataSource
from ablate.inference import audit, sample
from ablate.model import build_model
from ablate.nn.ops import kernels
from ablate.plan.space import search_train, with_params
from ablate.plan.study import Trial
from ablate.run import claims, measures, search
from ablate.run.claims import Claim
from ablate.run.prepare import Deferred, PreparedStudy
from ablate.run.progress import Pace, clock
from ablate.tracking import records
from ablate.tracking.store import RunLog
from ablate.train.checkpoint import DamagedCheckpoint
from ablate.train.distributed import ALONE, Group
from ablate.train.trainer import Diverged, Trainer, seed_everything


class Status(str, Enum):
    """How a trial stands. FINISHED, FAILED and KILLED are also its MLflow run's status."""

    FINISHED = "FINISHED"
    SKIPPED = "SKIPPED"  # finished before this store had a work list
    PRUNED = "PRUNED"  # a search trial its pruner stopped
    FAILED = "FAILED"  # diverged, out of memory, or a search that completed no trial
    KILLED = "KILLED"  # let go of (Ctrl-C, SIGTERM): a rerun resumes it
    LOST = "LOST"  # taken over by another worker
    RUNNING = "RUNNING"
    PENDING = "PENDING"


@dataclass
class Outcome:
    trial: Trial
    status: Status
    metrics: dict = field(default_factory=dict)
    reason: str = ""


class Pruned(Exception):
    """Raised from an eval callback to stop a search trial that its pruner gave up on."""


class Lost(Exception):
    """Raised when another worker has taken this worker's claim over (it found us stale)."""


@dataclass
class Job:
    """One training of a trial into a run, and what watches it."""

    trial: Trial
    label: str
    tags: dict[str, str]
    claim: Claim
    on_eval: Callable[[int, float], None] | None = None  # sees each eval's val loss; may raise Pruned
    run_id: str | None = None  # the run an earlier attempt began, when the claim does not say
    on_run: Callable[[str], None] | None = None  # told the run's id once it is open
    beat: Callable[[], None] | None = None  # beaten with the claim's heartbeat
    keep_model: bool = False  # a finished run logs its model and tokenizer (for `ablate sample`)


@dataclass
class TrialRunner:
    """Trains one unit into one MLflow run, resuming the run and checkpoint an earlier holder left."""

    prepared: PreparedStudy
    progress: Progress
    overall: int | None = None  # the study's bar
    pace: Pace = field(default_factory=Pace)
    queued: list[tuple[str, int]] = field(default_factory=list)  # (family, steps) of final trials not yet taken
    group: Group = ALONE  # the ranks that train each trial together, this process leading them

    def final(self, trial: Trial, index: int, claim: Claim) -> Outcome:
        """The index-th of the study's final trials, with its variant's best searched setting."""
        p = self.prepared
        if trial.search is not None:
            best = search.best(f"{p.study.name}/{trial.variant}", p.rdb)
            if best is None:
                reason = "its search completed no trial, so there is no setting to train with"
                p.work.end(claim, claims.FAILED, reason)
                self.progress.console.print(f"{trial.variant} seed {trial.seed}: failed: {reason}")
                return Outcome(trial, Status.FAILED, reason=reason)
            p.tracker.tag(p.parents[trial.variant], {Tag.BEST + key: str(value) for key, value in best.items()})
            trial = replace(trial, train=with_params(trial.train, best))
        done = None if p.fresh else p.tracker.finished_trials(p.exp_id).get(trial.key(p.study.config.data))
        if done is not None and claim.run_id is None:  # finished before this store had a work list
            p.work.note(claim, run_id=done[0])
            p.work.end(claim, claims.DONE)
            return Outcome(trial, Status.SKIPPED, done[1])
        label = f"trial {index}/{len(p.study.trials)} {trial.variant} seed {trial.seed}"
        outcome = self.train(Job(trial, label, {Tag.PHASE: Phase.FINAL}, claim, keep_model=True))
        if outcome.status == Status.FINISHED:
            self.progress.console.print(f"{label}: val_loss {outcome.metrics[Metric.VAL_LOSS]:.4f}")
        return outcome

    def search(self, variant: str, slot: int, claim: Claim) -> Outcome:
        """One search trial: train the point of the space Optuna asks for, with the pruner
        watching each eval; tell Optuna how it ended and tag its run with that."""
        p = self.prepared
        config, name = p.study.searches[variant], f"{p.study.name}/{variant}"
        attempt = search.SearchTrial(name, p.rdb, config, slot, claim.optuna_trial)
        p.work.note(claim, optuna_trial=attempt.number)
        base = next(t for t in p.study.trials if t.variant == variant)
        # every search trial sees the same data and initialisation: the study's first seed
        trial = replace(base, seed=p.study.config.seeds[0], train=search_train(config, base.train, attempt.params))

        def report(step: int, val_loss: float) -> None:
            if attempt.should_prune(step, val_loss):
                raise Pruned

        tags = {Tag.PHASE: Phase.SEARCH, Tag.OPTUNA_STUDY: name, Tag.OPTUNA_TRIAL: str(attempt.number)}
        label = f"search {variant} #{attempt.number}"
        job = Job(trial, label, tags, claim, report, attempt.run_id, attempt.remember_run, attempt.beat)
        outcome = self.train(job)
        if outcome.status != Status.LOST:  # a lost trial goes on in the worker that took it over
            val_loss = outcome.metrics[Metric.VAL_LOSS] if outcome.status == Status.FINISHED else None
            state = attempt.tell(val_loss, pruned=outcome.status == Status.PRUNED, failure=outcome.reason)
            p.tracker.tag(outcome.metrics["run_id"], {Tag.OPTUNA_STATE: state})
            said = {"COMPLETE": f"val_loss {val_loss or 0:.4f}", "PRUNED": "pruned"}.get(
                state, f"failed: {outcome.reason}"
            )
            setting = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in attempt.params.items()
            )
            self.progress.console.print(f"{label}: {setting} → {said}")
        return outcome

    def train(self, job: Job) -> Outcome:
        """Train the job's trial into its run: a new one, or the one an earlier holder of the claim
        (or of the Optuna trial) began, continued from its checkpoint. Diverging (or out of GPU
        memory) fails the trial, not the study; Ctrl-C or SIGTERM lets it go for a rerun."""
        trial = job.trial
        run, trainer = self._open_run(job, self._trainer(trial))
        task = self.progress.add_task(job.label, total=trial.train.steps, loss="-", speed="-", eta="-")
        try:
            return self._fit(job, trainer, run, task)
        finally:
            self.progress.remove_task(task)

    def _trainer(self, trial: Trial) -> Trainer:
        """A trainer at step 0 for the trial, in this process's group."""
        causal = audit.is_causal(self.prepared.leaks[trial.variant])
        return trainer_for(trial, self.prepared.data, not causal, self.group)

    def _fit(self, job: Job, trainer: Trainer, run: RunLog, task: int) -> Outcome:
        p, trial, reason, final = self.prepared, job.trial, "", {}

        def checkpoint() -> Path:  # named by the run, which may still be opening when training starts
            return p.checkpoints / f"{run.run_id}.pt"

        first_step, started = trainer.step, time.perf_counter()
        with claims.Heartbeat(p.work, job.claim, job.beat) as heartbeat:
            on_metrics = self._reporter(job, trainer, run, task, heartbeat, (first_step, started))
            try:
                if job.on_run is not None:
                    job.on_run(run.run_id)
                self.progress.update(task, completed=trainer.step)
                p.first_step_at = p.first_step_at or time.perf_counter()
                p.tracking.start()  # where the store is still to be set up: while this trial trains
                run.start_opening()
                self.group.send(Lead(trial, trainer.prefix_eval, checkpoint() if trainer.step else None))
                final |= trainer.fit(on_metrics, checkpoint)
                if fell_back := kernels.fallbacks():  # the run's default_kernel param says fla; these ran torch
                    run.tag(Tag.FLA_FALLBACKS, ", ".join(fell_back))
                if job.on_eval is None:
                    self.pace.record(trial.model.mixer, time.perf_counter() - started, trainer.cfg.steps - first_step)
                run.metrics(trainer.cfg.steps, {k: final[k] for k in (Metric.TRAIN_TIME_S, Metric.MEAN_TOKENS_PER_S)})
                if job.keep_model:
                    sample.save(run, trainer.model, trial.model, p.data.tokenizer_path)
                    measures.after_training(p, self.progress.console.print, job.label, trainer, run)
                status = Status.FINISHED
            except Pruned:
                status = Status.PRUNED  # stopped on purpose: its curve up to here is kept
            except (Diverged, _oom()) as e:
                status, reason = Status.FAILED, self._failed(e, trainer.step, run, job.label)
            except Lost:
                self.progress.console.print(f"{job.label}: another worker took this trial over; leaving it to it")
                return Outcome(trial, Status.LOST, final | {"run_id": run.run_id})
            except BaseException as e:  # Ctrl-C, SIGTERM, a bug or a failing disk: a rerun resumes it
                self._let_go(run, job.claim, interrupted=isinstance(e, KeyboardInterrupt))
                raise
        run.end(Status.FAILED.value if status == Status.FAILED else Status.FINISHED.value)
        p.work.end(job.claim, claims.FAILED if status == Status.FAILED else claims.DONE, reason or None)
        checkpoint().unlink(missing_ok=True)
        return Outcome(trial, status, final | {"run_id": run.run_id}, reason)

    def _open_run(self, job: Job, trainer: Trainer) -> tuple[RunLog, Trainer]:
        """The run to train into and its trainer: the earlier run with the trainer resumed from its
        checkpoint, or a new one (the earlier one deleted when it was cut off before its first
        checkpoint, or ended FAILED when its checkpoint is damaged: that file is set aside and a
        new trainer starts again)."""
        p, run_id = self.prepared, job.run_id or job.claim.run_id
        run = p.tracker.resume(run_id) if run_id else None
        saved = p.checkpoints / f"{run_id}.pt"
        if run is not None and not saved.exists():  # cut off before its first checkpoint: nothing to keep
            p.tracker.delete(run_id)
            run = None
        if run is None:
            return self._start(job, trainer), trainer
        try:
            trainer.load(saved)
        except DamagedCheckpoint as e:
            aside = saved.with_name(f"{saved.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            saved.rename(aside)
            restarted = f"checkpoint of run {run_id} unreadable ({e}); set aside as {aside.name}"
            run.tag(Tag.FAILURE, restarted)
            run.end(Status.FAILED.value, flush=False)
            self.progress.console.print(
                f"{job.label}: warning: {restarted}; training again from step 0 in a new run", soft_wrap=True
            )
            trainer = self._trainer(job.trial)  # the damaged file may have loaded in part
            run = self._start(job, trainer)
            run.tag(Tag.RESTARTED, restarted)
            return run, trainer
        p.work.note(job.claim, run_id=run_id)
        run.tag(Tag.RESUMED_FROM_STEP, str(trainer.step))
        for key, value in records.placement().items():  # where it trains now
            run.tag(key, value)
        self.progress.console.print(f"{job.label}: resuming run {run_id} from step {trainer.step}")
        return run, trainer

    def _reporter(self, job: Job, trainer: Trainer, run: RunLog, task: int, heartbeat, start: tuple):
        """The Trainer's callback: log to the run, move the bars, let the pruner see each eval.
        `start` is (step, time) where this process took the trial up: the rate so far counts from there."""
        family, steps, (first_step, started) = job.trial.model.mixer, trainer.cfg.steps, start
        last_step = first_step

        def on_metrics(step: int, metrics: dict[str, float], kind: str) -> None:
            nonlocal last_step
            if heartbeat.lost:
                raise Lost
            run.record(step, metrics, kind)
            if kind != "log":  # an eval, or the one before training ("start"), which nothing prunes on
                if kind == "eval" and job.on_eval is not None:
                    job.on_eval(step, metrics[Metric.VAL_LOSS])
                return
            now = {"loss": f"{metrics[Metric.TRAIN_LOSS]:.3f}", "speed": f"{metrics[Metric.TOKENS_PER_S]:,.0f}"}
            rate = (time.perf_counter() - started) / (step - first_step) if step > first_step else None
            self.progress.update(task, completed=step, eta=clock(self.pace.eta(family, steps - step, rate, [])), **now)
            if self.overall is not None and job.on_eval is None:  # the study bar counts final trials
                left = self.pace.eta(family, steps - step, rate, self.queued)
                self.progress.update(self.overall, advance=step - last_step, eta=clock(left), **now)
            last_step = step

        return on_metrics

    def _failed(self, e: Exception, step: int, run: RunLog, label: str) -> str:
        """A trial that diverged or ran out of GPU memory: tag its run with why and where; the reason."""
        reason = getattr(e, "reason", None) or f"CUDA out of memory: {e}".splitlines()[0]
        step = getattr(e, "step", step)
        run.tag(Tag.FAILURE, reason)
        run.tag(Tag.FAILED_STEP, str(step))
        self.progress.console.print(f"{label}: failed: {reason} (step {step})")
        _free_gpu()
        return reason

    def _let_go(self, run: RunLog, claim: Claim, interrupted: bool) -> None:
        """End the run KILLED (Ctrl-C, SIGTERM) or FAILED (a bug, a failing disk) and open the claim
        again for a rerun. What is past the last checkpoint is logged again on resume; a store
        failing too must not hide the first error."""
        with contextlib.suppress(Exception):
            run.end(Status.KILLED.value if interrupted else Status.FAILED.value, flush=False)
        with contextlib.suppress(Exception):
            self.prepared.work.end(claim, claims.OPEN)

    def _start(self, job: Job, trainer: Trainer) -> RunLog:
        """A new run for the trial, noted on its claim. In a fresh store a final trial's run opens
        in the background (after the store itself), while the trial begins to train."""
        p, trial, device = self.prepared, job.trial, str(trainer.device)

        def opened() -> RunLog:
            leak = p.leaks[trial.variant]
            tags = records.trial_tags(p.study, trial, p.data.meta, audit.is_causal(leak), leak) | job.tags
            tags |= records.placement()
            params = records.trial_params(p.study, trial, p.data.meta, device)
            number = job.tags.get(Tag.OPTUNA_TRIAL)
            if number is None:  # this claim's holder alone opens the trial's runs: one RUNNING is an orphan
                for orphan in p.tracker.unclaimed_runs(p.exp_id, tags[Tag.TRIAL_KEY]):
                    p.tracker.delete(orphan)
            name = f"{trial.variant}-search{number}" if number is not None else f"{trial.variant}-seed{trial.seed}"
            run = p.tracker.start(p.exp_id, name, tags, params, parent_id=p.parents[trial.variant])
            p.tracker.log_dataset(run.run_id, records.dataset(p.data.meta, p.study.config.data))
            run.text(p.study.text, "study.yaml")
            p.work.note(job.claim, run_id=run.run_id)
            return run

        if p.fresh and job.on_run is None:  # after the store's setup: one background worker, in order
            return RunLog.later(Deferred(opened))
        return opened()


def trainer_for(trial: Trial, data, prefix_eval: bool, group: Group) -> Trainer:
    """A trainer at step 0 for the trial: its model drawn from the trial's seed."""
    seed_everything(trial.seed)
    return Trainer(build_model(trial.model), data, trial.train, trial.seed, prefix_eval, group)


@dataclass(frozen=True)
class Lead:
    """What the leader of a group tells the other ranks to train: the trial, and the checkpoint it
    resumed from (None: from step 0)."""

    trial: Trial
    prefix_eval: bool
    resume_from: Path | None


def follow(group: Group, data: Callable[[], DataSource]) -> None:
    """A rank other than the leader: train what the leader says, beside it, until it says that
    nothing is left (None). Whatever stops a trial (the leader letting it go, SIGTERM, a
    divergence every rank sees) is the leader's to record; this rank waits for the next word."""
    source = None
    while (lead := group.receive()) is not None:
        source = source or data()
        trainer = trainer_for(lead.trial, source, lead.prefix_eval, group)
        if lead.resume_from is not None:
            trainer.load(lead.resume_from)
        with contextlib.suppress(Terminated, Diverged):
            trainer.fit()


def _oom():
    import torch

    return torch.cuda.OutOfMemoryError


def _free_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

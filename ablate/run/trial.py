"""One unit of work → one MLflow run: a final trial (with its variant's best searched setting)
or a search trial (asked of Optuna, pruned on its evals, told how it ended), trained by the
shared Trainer and resumed from the run and checkpoint an earlier holder of its claim left."""

import contextlib
import time
import warnings
from dataclasses import dataclass, field, replace
from enum import Enum

from rich.progress import Progress

from ablate import audit, sample, tracking
from ablate.config import TrainConfig
from ablate.model import build_model
from ablate.plan.study import Trial
from ablate.run import claims, search
from ablate.run.claims import Claim
from ablate.run.prepare import PreparedStudy
from ablate.run.progress import Pace, clock
from ablate.train.checkpoint import DamagedCheckpoint
from ablate.train.trainer import Diverged, Trainer, seed_everything

STATE = tracking.TAG + "optuna_state"  # the Optuna state a search trial's run ended in
RUN_ID = "ablate.run_id"  # Optuna user attr: the MLflow run of a search trial (kept by a retry)


class Status(str, Enum):
    """How a trial stands. FINISHED, FAILED and KILLED are also its MLflow run's status."""

    FINISHED = "FINISHED"
    SKIPPED = "SKIPPED"  # finished before this store had a work list
    PRUNED = "PRUNED"  # a search trial its pruner stopped
    FAILED = "FAILED"  # diverged, out of memory, or a search that completed no trial
    KILLED = "KILLED"  # let go of (Ctrl-C): a rerun resumes it
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
class TrialRunner:
    """Trains one unit into one MLflow run, resuming the run and checkpoint an earlier holder left."""

    prepared: PreparedStudy
    progress: Progress
    overall: int | None = None  # the study's bar
    pace: Pace = field(default_factory=Pace)
    queued: list[tuple[str, int]] = field(default_factory=list)  # (family, steps) of final trials not yet taken

    def final(self, trial: Trial, index: int, claim: Claim) -> Outcome:
        """The index-th of the study's final trials, with its variant's best searched setting."""
        p = self.prepared
        if trial.search is not None:
            best = self.best(trial.variant)
            if best is None:
                reason = "its search completed no trial, so there is no setting to train with"
                p.work.end(claim, claims.FAILED, reason)
                self.progress.console.print(f"{trial.variant} seed {trial.seed}: failed: {reason}")
                return Outcome(trial, Status.FAILED, reason=reason)
            trial = replace(trial, train={**trial.train, **best})
        done = p.tracker.finished_trials(p.exp_id).get(trial.key(p.study.config.data))
        if done is not None and claim.run_id is None:  # finished before this store had a work list
            p.work.note(claim, run_id=done[0])
            p.work.end(claim, claims.DONE)
            return Outcome(trial, Status.SKIPPED, done[1])
        label = f"trial {index}/{len(p.study.trials)} {trial.variant} seed {trial.seed}"
        outcome = self.train(trial, label, {tracking.TAG + "phase": "final"}, claim, keep_model=True)
        if outcome.status == Status.FINISHED:
            self.progress.console.print(f"{label}: val_loss {outcome.metrics['val_loss']:.4f}")
        return outcome

    def best(self, variant: str) -> dict | None:
        """The variant's best searched setting (tagged on its parent run); None when no search trial completed."""
        import optuna

        p = self.prepared
        study = optuna.load_study(study_name=f"{p.study.name}/{variant}", storage=p.rdb)
        if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            return None
        best = study.best_trial
        for key, value in best.params.items():  # tags, not params: a resumed search may find a better value
            p.tracker.client.set_tag(p.parents[variant], f"{tracking.TAG}best.{key}", str(value))
        return best.params

    def search(self, variant: str, slot: int, claim: Claim) -> Outcome:
        """One search trial: ask Optuna for a trial (a queued retry of a lost one first), train it
        with the pruner watching each eval, tell Optuna how it ended."""
        p = self.prepared
        config = p.study.searches[variant]
        name = f"{p.study.name}/{variant}"
        study = search.open_study(name, p.rdb, config, slot)
        if claim.optuna_trial is not None:
            search.retry(study, p.rdb, claim.optuna_trial)  # its worker is gone: queue it again
        with warnings.catch_warnings():  # ask/tell with our own heartbeat thread, not optimize()
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        p.work.note(claim, optuna_trial=trial.number)
        params = {key: d.suggest(trial, key) for key, d in config.space.items()}
        base = next(t for t in p.study.trials if t.variant == variant)
        base = replace(base, seed=p.study.config.seeds[0])  # every search trial sees the same data and init
        label = f"search {variant} #{trial.number}"

        def report(step: int, val_loss: float) -> None:
            trial.report(val_loss, step)
            if trial.should_prune():
                raise Pruned

        tags = {
            tracking.TAG + "phase": "search",
            tracking.TAG + "optuna_study": name,
            tracking.TAG + "optuna_trial": str(trial.number),
        }
        outcome = self.train(
            replace(base, train=config.train(base.train, params)),
            label,
            tags,
            claim,
            on_eval=report,
            run_id=trial.user_attrs.get(RUN_ID),
            on_run=lambda run_id: trial.set_user_attr(RUN_ID, run_id),
            beat=lambda: p.rdb.record_heartbeat(trial._trial_id),
        )
        if outcome.status != Status.LOST:  # a lost trial goes on in the worker that took it over
            said = self._tell(study, trial, outcome)
            setting = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            self.progress.console.print(f"{label}: {setting} → {said}")
        return outcome

    def _tell(self, study, trial, outcome: Outcome) -> str:
        """Tell Optuna how the search trial ended, tag its run with that state; say it in words."""
        from optuna.trial import TrialState

        if outcome.status == Status.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
            state, said = "PRUNED", "pruned"
        elif outcome.status == Status.FINISHED:
            study.tell(trial, outcome.metrics["val_loss"])
            state, said = "COMPLETE", f"val_loss {outcome.metrics['val_loss']:.4f}"
        else:
            trial.set_user_attr("ablate.failure", outcome.reason)
            study.tell(trial, state=TrialState.FAIL)
            state, said = "FAIL", f"failed: {outcome.reason}"
        self.prepared.tracker.client.set_tag(outcome.metrics["run_id"], STATE, state)
        return said

    def train(
        self,
        trial: Trial,
        label: str,
        tags: dict[str, str],
        claim: Claim,
        on_eval=None,
        run_id: str | None = None,
        on_run=None,
        beat=None,
        keep_model: bool = False,
    ) -> Outcome:
        """Train the trial into its run: a new one, or the one an earlier holder of the claim (or
        of the Optuna trial) began, continued from its checkpoint. on_eval(step, val_loss) may
        raise Pruned. Diverging (or out of GPU memory) fails the trial, not the study. With
        keep_model, a finished run logs its model and tokenizer (for `ablate sample`)."""
        p = self.prepared
        seed_everything(trial.seed)
        model = build_model(trial.model)
        trainer = Trainer(model, p.data, TrainConfig(**trial.train), trial.seed, prefix_eval=not self._causal(trial))
        run = self._open_run(trial, tags, trainer, run_id or claim.run_id, label)
        p.work.note(claim, run_id=run.run_id)
        if on_run is not None:
            on_run(run.run_id)
        checkpoint = p.checkpoints / f"{run.run_id}.pt"
        task = self.progress.add_task(
            label, total=trainer.cfg.steps, loss="-", speed="-", eta="-", completed=trainer.step
        )
        final, reason = {"run_id": run.run_id}, ""
        first_step, started = trainer.step, time.perf_counter()
        with claims.Heartbeat(p.work, claim, beat) as heartbeat:
            on_metrics = self._reporter(trial, trainer, run, task, heartbeat, on_eval, (first_step, started))
            try:
                final |= trainer.fit(on_metrics, checkpoint)
                if on_eval is None:
                    self.pace.record(
                        trial.model["mixer"], time.perf_counter() - started, trainer.cfg.steps - first_step
                    )
                run.metrics(trainer.cfg.steps, {k: final[k] for k in ("train_time_s", "mean_tokens_per_s")})
                if keep_model:
                    sample.save(run, model, trial.model, p.data.tokenizer_path)
                status = Status.FINISHED
            except Pruned:
                status = Status.PRUNED  # stopped on purpose: its curve up to here is kept
            except (Diverged, _oom()) as e:
                status, reason = Status.FAILED, self._failed(e, trainer.step, run, label)
            except Lost:
                self.progress.remove_task(task)
                self.progress.console.print(f"{label}: another worker took this trial over; leaving it to it")
                return Outcome(trial, Status.LOST, final)
            except BaseException as e:  # Ctrl-C, a bug or a failing disk: not the trial's fault, a rerun resumes it
                self._let_go(run, claim, interrupted=isinstance(e, KeyboardInterrupt))
                self.progress.remove_task(task)
                raise
        run.end(Status.FAILED.value if status == Status.FAILED else Status.FINISHED.value)
        p.work.end(claim, claims.FAILED if status == Status.FAILED else claims.DONE, reason or None)
        checkpoint.unlink(missing_ok=True)
        self.progress.remove_task(task)
        return Outcome(trial, status, final, reason)

    def _causal(self, trial: Trial) -> bool:
        return audit.is_causal(self.prepared.leaks[trial.variant])

    def _open_run(
        self, trial: Trial, tags: dict[str, str], trainer: Trainer, run_id: str | None, label: str
    ) -> tracking.RunLog:
        """The run to train into: the earlier one with the trainer resumed from its checkpoint, or a
        new one (the earlier one deleted when it was cut off before its first checkpoint, or ended
        FAILED when its checkpoint is damaged: that file is set aside and training starts again)."""
        p = self.prepared
        run = p.tracker.resume(run_id) if run_id else None
        saved = p.checkpoints / f"{run_id}.pt"
        if run is not None and not saved.exists():  # cut off before its first checkpoint: nothing to keep
            p.tracker.client.delete_run(run_id)
            run = None
        restarted = ""
        if run is not None:
            try:
                trainer.load(saved)
            except DamagedCheckpoint as e:
                aside = saved.with_name(f"{saved.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                saved.rename(aside)
                restarted = f"checkpoint of run {run_id} unreadable ({e}); set aside as {aside.name}"
                run.tag(tracking.TAG + "failure", restarted)
                run.end(Status.FAILED.value, flush=False)
                run = None
                self.progress.console.print(
                    f"{label}: warning: {restarted}; training again from step 0 in a new run", soft_wrap=True
                )
            else:
                run.tag(tracking.TAG + "resumed_from_step", str(trainer.step))
                self.progress.console.print(f"{label}: resuming run {run_id} from step {trainer.step}")
                return run
        run = self._start(trial, tags, trainer)
        if restarted:
            run.tag(tracking.TAG + "restarted_from_step_0", restarted)
        return run

    def _reporter(
        self, trial: Trial, trainer: Trainer, run: tracking.RunLog, task: int, heartbeat, on_eval, start: tuple
    ):
        """The Trainer's callback: log to the run, move the bars, let the pruner see each eval.
        `start` is (step, time) where this process took the trial up: the rate so far counts from there."""
        family, steps, (first_step, started) = trial.model["mixer"], trainer.cfg.steps, start
        last_step = first_step

        def on_metrics(step: int, metrics: dict[str, float], kind: str) -> None:
            nonlocal last_step
            if heartbeat.lost:
                raise Lost
            run.record(step, metrics, kind)
            if kind != "log":  # an eval, or the one before training ("start"), which nothing prunes on
                if kind == "eval" and on_eval is not None:
                    on_eval(step, metrics["val_loss"])
                return
            now = {"loss": f"{metrics['train_loss']:.3f}", "speed": f"{metrics['tokens_per_s']:,.0f}"}
            rate = (time.perf_counter() - started) / (step - first_step) if step > first_step else None
            self.progress.update(task, completed=step, eta=clock(self.pace.eta(family, steps - step, rate, [])), **now)
            if self.overall is not None and on_eval is None:  # the study bar counts final trials
                left = self.pace.eta(family, steps - step, rate, self.queued)
                self.progress.update(self.overall, advance=step - last_step, eta=clock(left), **now)
            last_step = step

        return on_metrics

    def _failed(self, e: Exception, step: int, run: tracking.RunLog, label: str) -> str:
        """A trial that diverged or ran out of GPU memory: tag its run with why and where; the reason."""
        reason = getattr(e, "reason", None) or f"CUDA out of memory: {e}".splitlines()[0]
        step = getattr(e, "step", step)
        run.tag(tracking.TAG + "failure", reason)
        run.tag(tracking.TAG + "failed_step", str(step))
        self.progress.console.print(f"{label}: failed: {reason} (step {step})")
        _free_gpu()
        return reason

    def _let_go(self, run: tracking.RunLog, claim: Claim, interrupted: bool) -> None:
        """End the run KILLED (Ctrl-C) or FAILED (a bug, a failing disk) and open the claim again for a
        rerun. What is past the last checkpoint is logged again on resume; a store failing too must not
        hide the first error."""
        with contextlib.suppress(Exception):
            run.end(Status.KILLED.value if interrupted else Status.FAILED.value, flush=False)
        with contextlib.suppress(Exception):
            self.prepared.work.end(claim, claims.OPEN)

    def _start(self, trial: Trial, tags: dict[str, str], trainer: Trainer) -> tracking.RunLog:
        p = self.prepared
        tags = tracking.trial_tags(p.study, trial, p.data.meta, p.leaks[trial.variant]) | tags
        params = tracking.trial_params(p.study, trial, p.data.meta, str(trainer.device))
        number = tags.get(tracking.TAG + "optuna_trial")
        name = f"{trial.variant}-search{number}" if number is not None else f"{trial.variant}-seed{trial.seed}"
        run = p.tracker.start(p.exp_id, name, tags, params, parent_id=p.parents[trial.variant])
        p.tracker.log_dataset(run.run_id, p.data.meta, p.study.config.data)
        run.text(p.study.text, "study.yaml")
        return run


def _oom():
    import torch

    return torch.cuda.OutOfMemoryError


def _free_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

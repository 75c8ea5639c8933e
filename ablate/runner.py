"""Run a planned study: prepare the data and the stores once, then let one or more workers
draw units of work (search trials, then final trials) from the study's work list, each unit
trained into its own MLflow run and resumable from its last checkpoint."""

import contextlib
import datetime
import subprocess
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ablate import audit, claims, errors, processes, sample, search, tracking
from ablate.claims import Claim, WorkList
from ablate.config import TrainConfig
from ablate.data import DataSource, open_source
from ablate.errors import AblateError
from ablate.model import build_model
from ablate.study import Study, Trial
from ablate.train.checkpoint import DamagedCheckpoint
from ablate.train.trainer import Diverged, Trainer, seed_everything

POLL_S = 0.5  # how often an idle worker looks for work another worker may free


@dataclass
class Outcome:
    trial: Trial
    status: str  # FINISHED, SKIPPED (finished earlier), FAILED, KILLED, LOST (taken over), PENDING
    metrics: dict = field(default_factory=dict)
    reason: str = ""


@dataclass
class Unit:
    """One claimable piece of work: a search trial slot of a variant, or one final trial."""

    name: str
    variant: str
    trial: Trial | None = None  # final units: the trial as planned (before the search's best setting)
    index: int = 0  # final units: position in the study's trials, for the "trial i/N" label
    slot: int = 0  # search units: which of the variant's search trials


def units(study: Study) -> list[Unit]:
    """Search slots first (a variant's final trials wait for its search), then the final trials."""
    out = [
        Unit(f"search/{variant}/{slot}", variant, slot=slot)
        for variant, cfg in study.searches.items()
        for slot in range(cfg.trials)
    ]
    for i, trial in enumerate(study.trials, 1):
        key = trial.key(study.config.data)
        out.append(Unit(f"final/{trial.variant}/seed{trial.seed}/{key}", trial.variant, trial, i))
    return out


@dataclass
class Setup:
    """What every worker of a study shares: the audited study, its data and its stores."""

    study: Study
    leaks: dict[str, float]
    corpus: DataSource
    tracker: tracking.Tracker
    exp_id: str
    parents: dict[str, str]  # "study" and each variant → its parent run
    storage: str
    rdb: object  # the Optuna RDBStorage
    work: WorkList
    checkpoints: Path


def setup(study: Study, results: Path, uri: str, storage: str | None, checkpoints: Path | None, console) -> Setup:
    """Audit and prepare the data (either may refuse the study before any store is touched),
    then create the stores and parent runs once, whichever worker comes first (several
    processes creating SQLite tables at once would crash)."""
    leaks = audit.audit_study(study)
    audit.refuse_leaks(study, leaks)
    leaky = audit.leaking(leaks)
    console.print(
        f"audit: {len(leaks) - len(leaky)} of {len(leaks)} variants causal"
        + (f"; leaking (allowed by allow_leaky): {', '.join(leaky)}" if leaky else "")
    )
    corpus = open_source(study.config.data, results / "cache", study.path.parent)
    console.print(corpus.describe())

    results.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(results)
    checkpoints = checkpoints or results / "checkpoints"
    work = WorkList(storage, study.name)
    first = _first(work, "setup")
    rdb = search.storage(storage)
    tracker = tracking.Tracker(uri, results)
    config = study.config
    expect = [e.model_dump() for e in config.expect]
    budget = config.budget.model_dump() if config.budget else None
    names = [v.name for v in config.variants]
    exp_id = tracker.experiment(study.name, study.baseline, names, config.contrasts, expect, budget)
    parents = {"study": tracker.parent(exp_id, "study", study.name, {tracking.TAG + "study": study.name})}
    for v in study.config.variants:
        tags = {tracking.TAG + "variant": v.name}
        parents[v.name] = tracker.parent(exp_id, "variant", v.name, tags, parents["study"])
        tracker.tag(parents[v.name], grouping_tags(study, v.name))
    if first is not None:
        work.end(first, claims.DONE)
    known = next((row.run_id for row in work.rows().values() if row.run_id), None)
    if known is not None and tracker.lifecycle(known) is None:
        raise AblateError(
            f"the study database {storage} lists runs that the MLflow store {uri} has never had: the two "
            "no longer belong together (one was deleted or replaced); delete both, or start with a fresh --results"
        )
    for path in remove_stray_checkpoints(checkpoints, tracker):  # safe for any worker: a live one's are kept
        console.print(f"removed {path}: nothing can resume it", soft_wrap=True)
    return Setup(study, leaks, corpus, tracker, exp_id, parents, storage, rdb, work, checkpoints)


def grouping_tags(study: Study, variant: str) -> dict[str, str]:
    """What a user groups and filters a variant's runs by in the MLflow UI: its mixer family,
    whether its blocks have an FFN, and the study's contrasts it is part of."""
    model = next(t.model for t in study.trials if t.variant == variant)
    contrasts = [f"{a} vs {b}" for a, b in study.config.contrasts if variant in (a, b)]
    tags = {tracking.TAG + "family": model["mixer"], tracking.TAG + "ffn": str(model["ffn"]).lower()}
    return tags | ({tracking.TAG + "contrast": "; ".join(contrasts)} if contrasts else {})


def remove_stray_checkpoints(folder: Path, tracker: tracking.Tracker) -> list[Path]:
    """Checkpoints nothing can resume (their run was deleted, or the store was replaced) and
    the temporary files of saves cut off by a dead process: removed, and returned."""
    stray = [p for p in folder.glob("*.pt") if tracker.lifecycle(p.stem) != "active"]
    stray += [p for p in folder.glob(".*.tmp") if processes.gone(p.name.removesuffix(".tmp").partition(".pt.")[2])]
    for path in stray:
        path.unlink(missing_ok=True)
    return stray


def default_storage(results: Path) -> str:
    return f"sqlite:///{results.resolve() / 'optuna.db'}"


def _first(work: WorkList, unit: str) -> Claim | None:
    """Claim the unit if this worker is first to it; else wait until whoever has it is done."""
    while (claim := work.claim(unit)) is None:
        if claims.has_ended(work.rows(), unit):
            return None
        time.sleep(POLL_S)
    return claim


def run_study(
    study: Study,
    results: Path,
    uri: str,
    console: Console | None = None,
    store_args: str = "",
    storage: str | None = None,
    checkpoints: Path | None = None,
    workers: int = 1,
    worker_command: list[str] | None = None,
) -> list[Outcome]:
    """Set the study up, then work through it in this process (workers=1) or in `workers`
    processes started with worker_command; print the summary of every final trial."""
    console = console or Console()
    start = time.perf_counter()
    s = setup(study, results, uri, storage, checkpoints, console)
    try:
        if workers == 1:
            work(s, console)
        else:
            _spawn(worker_command, workers, console)
        outcomes = store_outcomes(s)
    except KeyboardInterrupt:
        _summary(s, store_outcomes(s), results, uri, time.perf_counter() - start, console, store_args)
        _end_parents(s, "KILLED")
        raise
    except BaseException as e:
        with contextlib.suppress(Exception):  # a broken store cannot take it; the error itself is reported
            _end_parents(s, "FAILED", errors.said(e))
        raise
    log_aggregates(s, outcomes)
    _end_parents(s, "FINISHED" if all(o.status not in ("PENDING", "KILLED") for o in outcomes) else "KILLED")
    _summary(s, outcomes, results, uri, time.perf_counter() - start, console, store_args)
    return outcomes


def log_aggregates(s: Setup, outcomes: list[Outcome]) -> None:
    """On each variant's parent run, each final metric over its finished seeds: the mean (under
    the metric's own name, so the UI's grouped rows show it), the 95% interval and n_seeds."""
    from ablate.compare import describe

    for variant in s.study.config.variants:
        finished = [o.metrics for o in outcomes if o.trial.variant == variant.name and o.status == "FINISHED"]
        if not finished:
            continue
        values = {"n_seeds": len(finished)}
        for name in set.intersection(*(set(m) for m in finished)):
            got = describe(np.array([m[name] for m in finished], dtype=float))
            values |= {name: got["mean"], f"{name}_ci95_low": got["ci95_low"], f"{name}_ci95_high": got["ci95_high"]}
        s.tracker.log_final(s.parents[variant.name], {k: v for k, v in values.items() if np.isfinite(v)})


def _end_parents(s: Setup, status: str, reason: str = "") -> None:
    for run_id in s.parents.values():
        if reason:
            s.tracker.client.set_tag(run_id, tracking.TAG + "failure", reason)
        s.tracker.set_status(run_id, status)


def _spawn(command: list[str], n: int, console) -> None:
    """Start n `ablate worker` processes (each in its own session, so that Ctrl-C reaches them
    once, forwarded from here) and wait for them all."""
    procs = [subprocess.Popen(command, start_new_session=True) for _ in range(n)]
    console.print(f"workers: started {n} (pids {', '.join(str(p.pid) for p in procs)})")
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(2)  # SIGINT: each marks its run KILLED and lets go of its claim
        for p in procs:
            p.wait()
        raise
    if bad := [c for c in codes if c != 0]:
        raise AblateError(f"{len(bad)} of {n} workers exited with an error (codes {bad}); rerun to resume")


def work(s: Setup, console, live: bool = True) -> list[Outcome]:
    """Claim and run units until every unit of the study has ended (some may be done by other
    workers meanwhile); a variant's final trials become claimable once its search has ended."""
    todo = units(s.study)
    finals = [u for u in todo if u.trial is not None]
    rows = s.work.rows()
    ended = sum(1 for u in finals if claims.has_ended(rows, u.name))
    # one redraw a second is enough for trials of minutes, and leaves the CPU to training
    with Progress(*PROGRESS_COLUMNS, console=console, disable=not live, refresh_per_second=1) as progress:
        runs = Runs(s, progress)
        for variant, cfg in s.study.searches.items():
            slots = [u.name for u in todo if u.trial is None and u.variant == variant]
            done = sum(1 for name in slots if claims.has_ended(rows, name))
            progress.console.print(f"search {variant}: {done} of {cfg.trials} trials done in {s.study.name}/{variant}")
        if ended:
            progress.console.print(
                f"{ended} of {len(finals)} trials already finished in the store; running the other {len(finals) - ended}"
            )
        steps = sum(u.trial.train["steps"] for u in finals if not claims.has_ended(rows, u.name))
        runs.overall = progress.add_task("study", total=steps, loss="-", speed="-", eta="-")
        outcomes = []
        while todo:
            rows = s.work.rows()
            todo = [u for u in todo if not claims.has_ended(rows, u.name)]
            searching = {u.variant for u in todo if u.trial is None}
            for unit in todo:
                if unit.trial is not None and unit.variant in searching:
                    continue
                if (claim := s.work.claim(unit.name)) is not None:
                    runs.queued = [
                        (u.trial.model["mixer"], u.trial.train["steps"])
                        for u in todo
                        if u.trial is not None and u is not unit and u.name not in rows
                    ]
                    outcomes.append(runs.search(unit, claim) if unit.trial is None else runs.final(unit, claim))
                    break
            else:
                if todo:
                    time.sleep(POLL_S)  # the rest is held by other workers
    return outcomes


PROGRESS_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
    TextColumn("loss {task.fields[loss]}"),
    TextColumn("{task.fields[speed]} tok/s"),
    TimeElapsedColumn(),
    TextColumn("ETA {task.fields[eta]}"),
)


class Pace:
    """Seconds per step of the final trials finished in this process, per mixer family: what the
    ETA is estimated from once one has finished (a trial's first steps, with their compiling,
    caching and first eval, are no guide to the rest, nor one family's speed to another's)."""

    def __init__(self):
        self.measured: dict[str, tuple[float, int]] = {}  # family → (seconds, steps)

    def record(self, family: str, seconds: float, steps: int) -> None:
        if steps > 0:
            total, n = self.measured.get(family, (0.0, 0))
            self.measured[family] = (total + seconds, n + steps)

    def per_step(self, family: str) -> float | None:
        """The family's measured seconds per step; else that of all families measured; else None."""
        pooled = self.measured.values()
        total, n = self.measured.get(family) or (sum(t for t, _ in pooled), sum(n for _, n in pooled))
        return total / n if n else None

    def eta(self, family: str, remaining: int, rate_now: float | None, queued: list[tuple[str, int]]) -> float | None:
        """Seconds left: this trial's remaining steps, then every queued (family, steps), each at
        its family's measured pace, falling back to this trial's own rate so far."""
        own = self.per_step(family) or rate_now
        if own is None:
            return None
        return remaining * own + sum(steps * (self.per_step(f) or own) for f, steps in queued)


def clock(seconds: float | None) -> str:
    return "-" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


STATE = tracking.TAG + "optuna_state"  # the Optuna state a search trial's run ended in
RUN_ID = "ablate.run_id"  # Optuna user attr: the MLflow run of a search trial (kept by a retry)


class Pruned(Exception):
    """Raised from an eval callback to stop a search trial that its pruner gave up on."""


class Lost(Exception):
    """Raised when another worker has taken this worker's claim over (it found us stale)."""


@dataclass
class Runs:
    """Trains one unit into one MLflow run, resuming the run and checkpoint an earlier holder left."""

    s: Setup
    progress: Progress
    overall: int | None = None
    pace: Pace = field(default_factory=Pace)
    queued: list[tuple[str, int]] = field(default_factory=list)  # (family, steps) of final trials not yet taken

    def final(self, unit: Unit, claim: Claim) -> Outcome:
        s, trial = self.s, unit.trial
        if trial.search is not None:
            best = self.best(trial.variant)
            if best is None:
                reason = "its search completed no trial, so there is no setting to train with"
                s.work.end(claim, claims.FAILED, reason)
                self.progress.console.print(f"{trial.variant} seed {trial.seed}: failed: {reason}")
                return Outcome(trial, "FAILED", reason=reason)
            trial = replace(trial, train={**trial.train, **best})
        done = s.tracker.finished_trials(s.exp_id).get(trial.key(s.study.config.data))
        if done is not None and claim.run_id is None:  # finished before this store had a work list
            s.work.note(claim, run_id=done[0])
            s.work.end(claim, claims.DONE)
            return Outcome(trial, "SKIPPED", done[1])
        label = f"trial {unit.index}/{len(s.study.trials)} {trial.variant} seed {trial.seed}"
        outcome = self.train(trial, label, {tracking.TAG + "phase": "final"}, claim, keep_model=True)
        if outcome.status == "FINISHED":
            self.progress.console.print(f"{label}: val_loss {outcome.metrics['val_loss']:.4f}")
        return outcome

    def best(self, variant: str) -> dict | None:
        import optuna

        name = f"{self.s.study.name}/{variant}"
        study = optuna.load_study(study_name=name, storage=self.s.rdb)
        if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            return None
        best = study.best_trial
        for key, value in best.params.items():  # tags, not params: a resumed search may find a better value
            self.s.tracker.client.set_tag(self.s.parents[variant], f"{tracking.TAG}best.{key}", str(value))
        return best.params

    def search(self, unit: Unit, claim: Claim) -> Outcome:
        """One search trial: ask Optuna for a trial (a queued retry of a lost one first), train it
        with the pruner watching each eval, tell Optuna how it ended."""
        import optuna

        s = self.s
        config = s.study.searches[unit.variant]
        name = f"{s.study.name}/{unit.variant}"
        study = search.open_study(name, s.rdb, config, unit.slot)
        if claim.optuna_trial is not None:
            search.retry(study, s.rdb, claim.optuna_trial)  # its worker is gone: queue it again
        with warnings.catch_warnings():  # ask/tell with our own heartbeat thread, not optimize()
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        s.work.note(claim, optuna_trial=trial.number)
        params = {key: d.suggest(trial, key) for key, d in config.space.items()}
        base = next(t for t in s.study.trials if t.variant == unit.variant)
        base = replace(base, seed=s.study.config.seeds[0])  # every search trial sees the same data and init
        run_trial = replace(base, train=config.train(base.train, params))
        setting = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        label = f"search {unit.variant} #{trial.number}"

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
            run_trial,
            label,
            tags,
            claim,
            on_eval=report,
            run_id=trial.user_attrs.get(RUN_ID),
            on_run=lambda run_id: trial.set_user_attr(RUN_ID, run_id),
            beat=lambda: s.rdb.record_heartbeat(trial._trial_id),
        )
        run = outcome.metrics.get("run_id")
        if outcome.status == "PRUNED":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            state, said = "PRUNED", "pruned"
        elif outcome.status == "FINISHED":
            study.tell(trial, outcome.metrics["val_loss"])
            state, said = "COMPLETE", f"val_loss {outcome.metrics['val_loss']:.4f}"
        elif outcome.status == "FAILED":
            trial.set_user_attr("ablate.failure", outcome.reason)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            state, said = "FAIL", f"failed: {outcome.reason}"
        else:
            return outcome  # lost to another worker, which goes on with the same Optuna trial
        s.tracker.client.set_tag(run, STATE, state)
        self.progress.console.print(f"{label}: {setting} → {said}")
        return outcome

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
        s, leak = self.s, self.s.leaks[trial.variant]
        seed_everything(trial.seed)
        model = build_model(trial.model)
        config = TrainConfig(**trial.train)
        trainer = Trainer(model, s.corpus, config, trial.seed, prefix_eval=not audit.is_causal(leak))
        run_id = run_id or claim.run_id
        run = s.tracker.resume(run_id) if run_id else None
        saved = s.checkpoints / f"{run_id}.pt"
        restarted = ""
        if run is not None and saved.exists():
            try:
                trainer.load(saved)
            except DamagedCheckpoint as e:  # kept aside for a look; its run ends FAILED, a new one starts at step 0
                aside = saved.with_name(f"{saved.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                saved.rename(aside)
                restarted = f"checkpoint of run {run_id} unreadable ({e}); set aside as {aside.name}"
                run.tag(tracking.TAG + "failure", restarted)
                run.end("FAILED", flush=False)
                run = None
                self.progress.console.print(
                    f"{label}: warning: {restarted}; training again from step 0 in a new run", soft_wrap=True
                )
            else:
                run.tag(tracking.TAG + "resumed_from_step", str(trainer.step))
                self.progress.console.print(f"{label}: resuming run {run_id} from step {trainer.step}")
        elif run is not None:  # cut off before its first checkpoint: nothing to keep
            s.tracker.client.delete_run(run_id)
            run = None
        if run is None:
            run = self._start(trial, tags, trainer)
            if restarted:
                run.tag(tracking.TAG + "restarted_from_step_0", restarted)
        s.work.note(claim, run_id=run.run_id)
        if on_run is not None:
            on_run(run.run_id)
        checkpoint = s.checkpoints / f"{run.run_id}.pt"
        task = self.progress.add_task(label, total=config.steps, loss="-", speed="-", eta="-", completed=trainer.step)
        family, first_step, started = trial.model["mixer"], trainer.step, time.perf_counter()
        last_step = trainer.step

        with claims.Heartbeat(s.work, claim, beat) as heartbeat:

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
                left = self.pace.eta(family, config.steps - step, rate, [])
                self.progress.update(task, completed=step, eta=clock(left), **now)
                if self.overall is not None and on_eval is None:  # the study bar counts final trials
                    left = self.pace.eta(family, config.steps - step, rate, self.queued)
                    self.progress.update(self.overall, advance=step - last_step, eta=clock(left), **now)
                last_step = step

            final, reason = {"run_id": run.run_id}, ""
            try:
                final |= trainer.fit(on_metrics, checkpoint)
                if on_eval is None:
                    self.pace.record(family, time.perf_counter() - started, config.steps - first_step)
                run.metrics(config.steps, {k: final[k] for k in ("train_time_s", "mean_tokens_per_s")})
                if keep_model:
                    sample.save(run, model, trial.model, s.corpus.tokenizer_path)
                status = "FINISHED"
            except Pruned:
                status = "PRUNED"  # stopped on purpose: its curve up to here is kept
            except (Diverged, _oom()) as e:
                status, reason = "FAILED", getattr(e, "reason", None) or f"CUDA out of memory: {e}".splitlines()[0]
                run.tag(tracking.TAG + "failure", reason)
                run.tag(tracking.TAG + "failed_step", str(getattr(e, "step", trainer.step)))
                self.progress.console.print(f"{label}: failed: {reason} (step {getattr(e, 'step', trainer.step)})")
                _free_gpu()
            except Lost:
                self.progress.remove_task(task)
                self.progress.console.print(f"{label}: another worker took this trial over; leaving it to it")
                return Outcome(trial, "LOST", final)
            except KeyboardInterrupt:
                run.end("KILLED", flush=False)  # what is past the last checkpoint is logged again on resume
                s.work.end(claim, claims.OPEN)
                self.progress.remove_task(task)
                raise
            except BaseException:  # a bug or a failing disk, not the trial's fault: a rerun resumes it
                with contextlib.suppress(Exception):  # a store failing too must not hide the first error
                    run.end("FAILED", flush=False)
                with contextlib.suppress(Exception):
                    s.work.end(claim, claims.OPEN)
                raise
        run.end("FINISHED" if status in ("FINISHED", "PRUNED") else "FAILED")
        s.work.end(claim, claims.FAILED if status == "FAILED" else claims.DONE, reason or None)
        checkpoint.unlink(missing_ok=True)
        self.progress.remove_task(task)
        return Outcome(trial, status, final, reason)

    def _start(self, trial: Trial, tags: dict[str, str], trainer: Trainer) -> tracking.RunLog:
        s, leak = self.s, self.s.leaks[trial.variant]
        meta = s.corpus.meta
        tags = {
            tracking.TAG + "study": s.study.name,
            tracking.TAG + "variant": trial.variant,
            tracking.TAG + "seed": str(trial.seed),
            tracking.TAG + "trial_key": trial.key(s.study.config.data),
            tracking.TAG + "data_fingerprint": meta["fingerprint"],
            tracking.TAG + "python_version": meta["python_version"],
            tracking.TAG + "causal": str(audit.is_causal(leak)).lower(),
            tracking.TAG + "max_leak": f"{leak:.3e}",
            **grouping_tags(s.study, trial.variant),
            **tags,
        }
        params = {
            **tracking.flatten("model", trial.model),
            **tracking.flatten("train", trial.train),
            **tracking.flatten("data", s.study.config.data.model_dump()),
            "data.fingerprint": meta["fingerprint"],
            "data.unigram_entropy": f"{meta['unigram_entropy']:.6f}",
            **({"data.chance_accuracy": f"{meta['chance_accuracy']:.6f}"} if "chance_accuracy" in meta else {}),
            "variant": trial.variant,
            "seed": str(trial.seed),
            "n_params": str(trial.n_params),
            "n_params_non_embedding": str(trial.n_params_non_embedding),
            "flops_per_token": f"{trial.flops_per_token:.0f}",
            "budget": s.study.config.budget.describe() if s.study.config.budget else "none",
            "state_size": str(trial.state_size),
            "device": str(trainer.device),
        }
        number = tags.get(tracking.TAG + "optuna_trial")
        name = f"{trial.variant}-search{number}" if number is not None else f"{trial.variant}-seed{trial.seed}"
        run = s.tracker.start(s.exp_id, name, tags, params, parent_id=s.parents[trial.variant])
        run.text(s.study.text, "study.yaml")
        return run


def _oom():
    import torch

    return torch.cuda.OutOfMemoryError


def _free_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def store_outcomes(s: Setup) -> list[Outcome]:
    """Every final trial of the study as the store has it, whichever worker ran it."""
    rows = s.work.rows()
    out = []
    for unit in units(s.study):
        if unit.trial is None:
            continue
        row = rows.get(unit.name)
        if row is None or row.run_id is None:
            state = "FAILED" if row is not None and row.state == claims.FAILED else "PENDING"
            out.append(Outcome(unit.trial, state, reason=(row.detail or "") if row is not None else ""))
            continue
        run = s.tracker.client.get_run(row.run_id)
        status = run.info.status if row.state != claims.OPEN else "KILLED"
        if row.state == claims.RUNNING:
            status = "RUNNING"
        metrics = run.data.metrics if status == "FINISHED" else {}
        out.append(Outcome(unit.trial, status, metrics, run.data.tags.get(tracking.TAG + "failure", "")))
    return out


def _summary(s: Setup, outcomes, results, uri, elapsed, console, store_args) -> None:
    study, meta = s.study, s.corpus.meta
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
            o.status.lower() + (f": {o.reason}" if o.reason else ""),
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
    if "chance_accuracy" in meta:
        console.print(
            f"chance level of val_accuracy: {meta['chance_accuracy']:.4f} "
            "(the best guess without the capability the task tests)"
        )
    console.print(f"study wall time: {elapsed:.0f}s")
    console.print(
        f"results: {uri}" + ("" if not uri.startswith("sqlite") else f" (artifacts under {results / 'artifacts'})")
    )
    console.print(f"compare: ablate compare{store_args} --study {study.name} --metric val_loss")
    if study.config.expect:
        console.print(f"check:   ablate compare{store_args} --study {study.name} --check  (the study's expectations)")
    console.print(f"browse:  ablate ui{store_args}")

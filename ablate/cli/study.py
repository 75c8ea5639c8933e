"""Commands on a study file: run, worker, plan, audit."""

import json
import os
import time
from pathlib import Path

from ablate.cli.common import (
    DEFAULT_RESULTS,
    SMOKE_HELP,
    check_writable,
    console,
    cores,
    data_option,
    database_url,
    executor_options,
    existing_storage,
    fraction,
    launch,
    positive,
    store_hint,
    study_name,
    uri,
    work_options,
)
from ablate.core.errors import AblateError


def add_commands(sub) -> None:
    run = sub.add_parser("run", help="train every trial of a study and log it to MLflow")
    work_options(run)
    executor_options(run)
    run.set_defaults(func=run_command)

    worker = sub.add_parser("worker", help="join a study: train the units of work nobody else has claimed")
    work_options(worker)
    worker.add_argument("--threads", type=positive, help="torch threads, at most its cores (default: torch's choice)")
    worker.add_argument(
        "--gpu-fraction",
        type=fraction,
        help="the share of its GPU's memory this worker may take (GPU packing) (default: no cap)",
    )
    worker.add_argument("--no-progress", action="store_true", help="plain lines instead of live progress bars")
    worker.set_defaults(func=worker_command)

    status = sub.add_parser(
        "status", help="where a study stands: units done, running (where, last heartbeat), open, failed; the ETA"
    )
    status.add_argument("--study", type=study_name, help="the study (default: every study in the work list)")
    status.add_argument(
        "--storage", type=database_url, help="the work list's storage URL (default: sqlite:///RESULTS/optuna.db)"
    )
    status.add_argument(
        "--results",
        type=Path,
        default=Path(os.environ.get("ABLATE_RESULTS", DEFAULT_RESULTS)),
        help="the local store whose work list to read (default: ./results or $ABLATE_RESULTS)",
    )
    status.set_defaults(func=status_command)

    plan = sub.add_parser("plan", help="show the trials a study would run, with parameter counts")
    plan.add_argument("study", type=Path, help="the study's YAML file")
    plan.add_argument(
        "--json", action="store_true", help="the planned trials as JSON (each model as build_model takes it)"
    )
    plan.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    data_option(plan)
    plan.set_defaults(func=plan_command)

    audit = sub.add_parser("audit", help="check that models are causal: perturb future tokens and other sequences")
    audit.add_argument("study", type=Path, nargs="?", help="audit every variant of this study")
    audit.add_argument("--variant", action="append", default=[], help="audit a registered mixer at a small shape")
    data_option(audit)
    audit.set_defaults(func=audit_command)


def _stores(args):
    from ablate.run.workers import Stores

    check_writable(args.results)
    return Stores.at(args.results, uri(args), args.storage, args.checkpoints)


def run_command(args) -> int:
    started = time.perf_counter()
    from ablate.plan import study as study_mod
    from ablate.run.schedule import run_study
    from ablate.run.summary import print_summary
    from ablate.run.workers import WorkerSpec

    study = study_mod.load(args.study, smoke_form=args.smoke, data_source=args.data)  # all checked before writing
    stores = _stores(args)
    spec = WorkerSpec(args.study, stores, args.smoke, Path(args.data) if args.data else None, study.devices)
    out = console()
    run = run_study(study, stores, out, launch(args, spec), since=started)
    if run.detached:
        out.print(
            f"detached: follow it with `ablate status --study {study.name}{_status_hint(args)}`; once every unit "
            "has ended, the same run command trains nothing and ends the study's parent runs",
            soft_wrap=True,
        )
        return 0
    print_summary(study, run, stores, store_hint(args), out)
    if run.interrupted is not None:
        raise run.interrupted
    return 0


def _status_hint(args) -> str:
    """The flags `ablate status` needs to find the study's work list."""
    hint = store_hint(args).split(" --tracking-uri")[0]
    return hint + (f" --storage {args.storage}" if args.storage else "")


def worker_command(args) -> int:
    """One worker of a study: the stores are made by whoever comes first; units are claimed one by one."""
    from ablate.core.processes import stop_with_parent
    from ablate.data import open_source
    from ablate.plan import study as study_mod
    from ablate.run.prepare import prepare
    from ablate.run.schedule import work
    from ablate.run.trial import follow
    from ablate.train import distributed

    stop_with_parent()
    if args.threads or args.gpu_fraction:
        import torch

        if args.threads:
            torch.set_num_threads(cores(str(args.threads)))
        if args.gpu_fraction and torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(args.gpu_fraction)
    study = study_mod.load(args.study, smoke_form=args.smoke, data_source=args.data)
    group = distributed.from_environment()  # torchrun's ranks, where a trial trains on several devices
    try:
        if not group.leads:
            follow(group, lambda: open_source(study.config.data, args.results / "cache", study.path.parent))
            return 0
        out = console()
        try:
            outcomes = work(prepare(study, _stores(args), out), out, live=not args.no_progress, group=group)
        finally:
            group.send(None)  # the other ranks: nothing more to train
    finally:
        distributed.leave(group)
    out.print(f"worker {os.getpid()}: ran {len(outcomes)} units of {study.name}; no unit left to claim")
    return 0


def status_command(args) -> int:
    from ablate.run import status
    from ablate.run.workers import Stores

    storage = existing_storage(
        Stores.at(args.results, "", args.storage).storage, "work list", "run a study first, or give --storage"
    )
    status.show(status.read(storage, args.study), console())
    return 0


def plan_command(args) -> int:
    from ablate.plan import study as study_mod
    from ablate.plan.show import print_plan

    study = study_mod.load(args.study, smoke_form=args.smoke, data_source=args.data)
    if args.json:
        print(json.dumps({"study": study.name, "trials": [t.as_dict() for t in study.trials]}, indent=2))
    else:
        print_plan(study, console())
    return 0


def audit_command(args) -> int:
    """Exit 1 when a model leaks, unless the study says allow_leaky: true."""
    from ablate.inference import audit
    from ablate.plan import study as study_mod

    if not args.study and not args.variant:
        raise AblateError("audit what? give a study file or --variant NAME")
    leaks, allowed = {}, False
    if args.study:
        study = study_mod.load(args.study, data_source=args.data)
        leaks, allowed = audit.audit_study(study), study.config.allow_leaky
    for name in args.variant:
        leaks[name] = audit.audit_mixer(name)
    audit.print_table(leaks, console())
    return 1 if audit.leaking(leaks) and not allowed else 0

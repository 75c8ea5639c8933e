"""`ablate` command line: run, worker, plan, compare, ui, audit, bench, sample, import, eval, variants."""

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import ablate
from ablate.errors import AblateError, environment_error

DEFAULT_RESULTS = "results"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # MLflow logs every database error it catches with its traceback; the one-line error below says
    # what the database said
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    try:
        return args.func(args) or 0
    except AblateError as e:
        print(f"ablate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ablate: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        said = environment_error(e)
        if said is None:
            raise
        print(f"ablate: error: {said}", file=sys.stderr)
        return 2


COMPARE_TERMS = """terms (the README's glossary says more):
  paired        tested on the per-seed differences (one seed: same init and data order); else Welch's t-test
  Holm          p-values corrected for the number of comparisons in a table, so that α = 0.05 holds for it
  d_z           paired effect size: mean difference / standard deviation of the differences
  Hedges' g     unpaired effect size: difference of means / pooled standard deviation, small-sample corrected
  MDE           the smallest true difference the test would detect with 80% power at Holm's strictest level
  not converged loss still falling at the end, or within 5% of the unigram entropy: a verdict on speed only"""

SMOKE_HELP = "the smoke form: 20 steps, the first seed, experiment NAME-smoke (a quick look on a CPU)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ablate", description="Architecture ablations for small language models.")
    p.add_argument("--version", action="version", version=f"ablate {ablate.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        _add_run,
        _add_worker,
        _add_plan,
        _add_compare,
        _add_ui,
        _add_audit,
        _add_bench,
        _add_sample,
        _add_import,
        _add_eval,
        _add_variants,
    ):
        add(sub)
    return p


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="train every trial of a study and log it to MLflow")
    _work_options(run)
    run.add_argument("--workers", type=_positive, default=1, help="worker processes on this machine (default 1)")
    run.set_defaults(func=_run)


def _add_worker(sub) -> None:
    worker = sub.add_parser("worker", help="join a study: train the units of work nobody else has claimed")
    _work_options(worker)
    worker.add_argument("--threads", type=_positive, help="torch threads (default: torch's choice)")
    worker.add_argument("--no-progress", action="store_true", help="plain lines instead of live progress bars")
    worker.set_defaults(func=_worker)


def _add_plan(sub) -> None:
    plan = sub.add_parser("plan", help="show the trials a study would run, with parameter counts")
    plan.add_argument("study", type=Path, help="the study's YAML file")
    plan.add_argument(
        "--json", action="store_true", help="the planned trials as JSON (each model as build_model takes it)"
    )
    plan.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    _data_option(plan)
    plan.set_defaults(func=_plan)


def _add_compare(sub) -> None:
    compare = sub.add_parser(
        "compare",
        help="a table of variants: mean, 95%% CI, tests against the baseline (paired by seed, Holm)",
        epilog=COMPARE_TERMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("--study", help="study name (default: the one that ran last)")
    compare.add_argument(
        "--metric", default="val_loss", help="the logged metric to compare, e.g. val_accuracy (default: val_loss)"
    )
    compare.add_argument("--baseline", help="variant to compare against (default: the study's)")
    compare.add_argument(
        "--format",
        choices=("table", "csv", "markdown", "json"),
        default="table",
        help="table (for reading: contrasts, variants and expectations) or one table as csv, markdown or json "
        "(default: table)",
    )
    compare.add_argument(
        "--part",
        choices=("variants", "contrasts", "expectations", "laws", "crossings", "predictions"),
        default="variants",
        help="which table csv, markdown and json print (default: variants; the table format shows all; laws, "
        "crossings, predictions: a scaling study's)",
    )
    compare.add_argument(
        "--scaling",
        action="store_true",
        help="a scaling study's fitted laws L = E + A·x^(−α) per variant, with bootstrap intervals, and where "
        "they cross",
    )
    compare.add_argument(
        "--at",
        type=_positive_number,
        nargs="+",
        default=[],
        metavar="PARAMS",
        help="with --scaling: each law's prediction at these non-embedding parameter counts (e.g. 1e7)",
    )
    compare.add_argument(
        "--check", action="store_true", help="exit 1 when one of the study's expectations (expect:) does not hold"
    )
    compare.add_argument(
        "--wide", action="store_true", help="every column in the terminal (default: the decisive ones, 120 wide)"
    )
    compare.add_argument(
        "--no-report", action="store_true", help="skip the plots and report.html (default: RESULTS/STUDY/)"
    )
    direction = compare.add_mutually_exclusive_group()
    direction.add_argument(
        "--lower-is-better",
        action="store_const",
        const=True,
        dest="lower_is_better",
        help="the metric's direction (known for losses, accuracy and speed)",
    )
    direction.add_argument(
        "--higher-is-better",
        action="store_const",
        const=False,
        dest="lower_is_better",
        help="the metric's direction (known for losses, accuracy and speed)",
    )
    _store_options(compare)
    compare.set_defaults(func=_compare)


def _add_ui(sub) -> None:
    ui = sub.add_parser(
        "ui", help="start the MLflow UI on the store (127.0.0.1) and print its URL, on the study, once it answers"
    )
    ui.add_argument("--study", help="the study the URL opens on (default: the one that ran last)")
    ui.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    ui.add_argument("--workers", type=_positive, default=1, help="MLflow server worker processes (default 1)")
    ui.add_argument(
        "--optuna",
        action="store_true",
        help="Optuna's dashboard on the search storage instead: history, importances, parallel coordinates "
        '(pip install "ablate[dashboard]")',
    )
    ui.add_argument("--storage", help="with --optuna: the Optuna storage URL (default: sqlite:///RESULTS/optuna.db)")
    _store_options(ui)
    ui.set_defaults(func=_ui)


def _add_audit(sub) -> None:
    audit = sub.add_parser("audit", help="check that models are causal: perturb future tokens and other sequences")
    audit.add_argument("study", type=Path, nargs="?", help="audit every variant of this study")
    audit.add_argument("--variant", action="append", default=[], help="audit a registered mixer at a small shape")
    _data_option(audit)
    audit.set_defaults(func=_audit)


def _add_bench(sub) -> None:
    bench = sub.add_parser(
        "bench", help="time training steps per variant: tokens/s, memory, FLOPs/token, share of the matmul peak"
    )
    bench.add_argument("--study", type=Path, help="bench this study's variants at their planned shapes")
    bench.add_argument(
        "--variant",
        action="append",
        default=[],
        help="a registered mixer (or, with --study, a variant of it); repeat for more (default: mha, aft-simple, retention)",
    )
    bench.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model setting for every variant (YAML value)",
    )
    bench.add_argument("--batch-size", type=_positive, help="sequences per step (default: the study's, else 16)")
    bench.add_argument("--steps", type=_positive, default=20, help="timed steps (default 20)")
    bench.add_argument("--warmup", type=_positive, default=5, help="untimed steps first (default 5)")
    bench.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when there is one (default: auto)"
    )
    bench.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compiling)")
    bench.add_argument(
        "--parallel", type=_positive, default=1, metavar="K", help="K copies at once, in K processes (default 1)"
    )
    bench.add_argument("--threads", type=_positive, help="torch threads (default: torch's choice)")
    bench.add_argument("--json", action="store_true", help="a JSON list of result objects")
    bench.set_defaults(func=_bench)


def _add_sample(sub) -> None:
    sample = sub.add_parser("sample", help="generate text from a finished trial's model (from its MLflow run)")
    sample.add_argument("run_id", help="the MLflow run id of a finished final trial")
    sample.add_argument("--prompt", default="", help="text to continue (token ids for token-array data; default: none)")
    sample.add_argument("--tokens", type=_positive, default=100, help="tokens to generate (default 100)")
    sample.add_argument("--temperature", type=float, default=1.0, help="0 takes the most likely token (default 1)")
    sample.add_argument("--top-k", type=_positive, help="draw from the k most likely tokens only")
    sample.add_argument("--seed", type=int, default=0, help="the sampling RNG's seed (default 0)")
    sample.add_argument("--json", action="store_true", help="prompt and generated token ids and text as JSON")
    _store_options(sample)
    sample.set_defaults(func=_sample)


def _add_import(sub) -> None:
    imp = sub.add_parser("import", help="record a model trained elsewhere as a finished run (with its model)")
    imp.add_argument("kind", choices=("strawberry",), help="the checkpoint's format: strawberry (the seed's train.py)")
    imp.add_argument("checkpoint", type=Path, help="the checkpoint file")
    imp.add_argument(
        "--study", default="strawberry-imports", help="MLflow experiment to record it in (default: strawberry-imports)"
    )
    _store_options(imp)
    imp.set_defaults(func=_import)


def _add_eval(sub) -> None:
    evaluate = sub.add_parser(
        "eval",
        help="val loss and accuracy of a run's model, its causality audit and, if it leaks, its honest prefix loss",
    )
    evaluate.add_argument("run_id", help="a finished final trial's or an imported checkpoint's MLflow run id")
    evaluate.add_argument(
        "--data",
        metavar="STUDY_YAML_OR_TOKENS",
        help="a study YAML (its data: corpus or task) or a token array (.npy, .bin); default: the run's own study's data",
    )
    evaluate.add_argument("--batch-size", type=_positive, default=16, help="sequences per val batch (default 16)")
    evaluate.add_argument("--batches", type=_positive, default=20, help="val batches (default 20)")
    evaluate.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when there is one (default: auto)"
    )
    evaluate.add_argument("--json", action="store_true", help="the metrics and the evaluation run id as JSON")
    _store_options(evaluate)
    evaluate.set_defaults(func=_eval)


def _add_variants(sub) -> None:
    variants = sub.add_parser(
        "variants", help="list the registered mixers: what a study's variant names as its model.mixer"
    )
    variants.add_argument("--json", action="store_true", help="the name and description of each, as JSON")
    variants.set_defaults(func=_variants)


def _store_options(cmd) -> None:
    """Where the results are: the local store, or an MLflow tracking server."""
    cmd.add_argument(
        "--results",
        type=Path,
        default=Path(os.environ.get("ABLATE_RESULTS", DEFAULT_RESULTS)),
        help="local store for MLflow, artifacts and the data cache (default: ./results or $ABLATE_RESULTS)",
    )
    cmd.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else RESULTS/mlflow.db)"
    )


def _data_option(cmd) -> None:
    cmd.add_argument(
        "--data", metavar="PATH", help="train on this text or token array instead of the study's data.source"
    )


def _work_options(cmd) -> None:
    """What `run` and `worker` share: the study, its stores and its checkpoints."""
    cmd.add_argument("study", type=Path, help="the study's YAML file")
    cmd.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    _data_option(cmd)
    cmd.add_argument(
        "--storage",
        help="Optuna storage URL, which also holds the study's work list (default: sqlite:///RESULTS/optuna.db)",
    )
    cmd.add_argument(
        "--checkpoints",
        type=Path,
        help="checkpoint directory, shared by all workers (default: RESULTS/checkpoints)",
    )
    _store_options(cmd)


def _console():
    """A rich console; when output is not a terminal, wide enough that tables are not cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _store(args) -> tuple[Path, str]:
    from ablate.tracking import tracking_uri

    return args.results, tracking_uri(args.results, args.tracking_uri)


def _store_args(args) -> str:
    """The store flags to repeat in the hints printed after a run."""
    out = "" if str(args.results) == os.environ.get("ABLATE_RESULTS", DEFAULT_RESULTS) else f" --results {args.results}"
    return out + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else "")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _run(args) -> int:
    from ablate.plan import study as study_mod
    from ablate.run.prepare import default_storage
    from ablate.run.schedule import run_study

    # validates fully before anything is written
    study = study_mod.load(args.study, smoke_form=args.smoke, data_source=args.data)
    results, uri = _store(args)
    _check_writable(results)
    storage = args.storage or default_storage(results)
    checkpoints = args.checkpoints or results / "checkpoints"
    command = [sys.executable, "-m", "ablate.cli", "worker", str(args.study), "--storage", storage]
    command += ["--results", str(results), "--tracking-uri", uri, "--checkpoints", str(checkpoints), "--no-progress"]
    command += ["--smoke"] * args.smoke + ["--threads", str(max(1, (os.cpu_count() or 1) // args.workers))]
    command += ["--data", str(Path(args.data).resolve())] if args.data else []
    run_study(
        study,
        results,
        uri,
        _console(),
        store_args=_store_args(args),
        storage=storage,
        checkpoints=checkpoints,
        workers=args.workers,
        worker_command=command,
    )
    return 0


def _worker(args) -> int:
    """One worker of a study: the stores are made by whoever comes first; units are claimed one by one."""
    from ablate.plan import study as study_mod
    from ablate.run.prepare import prepare
    from ablate.run.schedule import work

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    study = study_mod.load(args.study, smoke_form=args.smoke, data_source=args.data)
    results, uri = _store(args)
    _check_writable(results)
    console = _console()
    prepared = prepare(study, results, uri, args.storage, args.checkpoints, console)
    outcomes = work(prepared, console, live=not args.no_progress)
    console.print(f"worker {os.getpid()}: ran {len(outcomes)} units of {study.name}; no unit left to claim")
    return 0


def _check_writable(results: Path) -> None:
    existing = next(p for p in [results, *results.resolve().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise AblateError(f"--results: {results} is not a writable directory")


def _plan(args) -> int:
    from dataclasses import asdict

    from rich.table import Table

    from ablate.plan import study as study_mod

    study = study_mod.load(args.study, smoke_form=args.smoke, data_source=args.data)
    trials = [
        {**{k: v for k, v in asdict(t).items() if k not in ("train", "search")}, "search": _searched(t)}
        for t in study.trials
    ]
    if args.json:
        print(json.dumps({"study": study.name, "trials": trials}, indent=2))
        return 0
    budget = study.config.budget
    title = f"study {study.name}: {len(trials)} trials" + (
        f" at {budget.describe()} (±{budget.tolerance:.1%})" if budget else ""
    )
    table = Table(title=title)
    columns = ("variant", "seed", "mixer", "layers", "d_model", "heads", "qkv", "ffn", "params", "non-emb")
    for col in columns + ("FLOPs/token", "state"):
        table.add_column(col, justify="left" if col in ("variant", "mixer") else "right", no_wrap=True)
    for t in trials:
        m = t["model"]
        table.add_row(
            t["variant"],
            str(t["seed"]),
            m["mixer"],
            str(m["n_layers"]),
            str(m["d_model"]),
            str(m["n_heads"]),
            str(m["qkv_dim"]),
            str(m["ffn_dim"]) if m["ffn"] else "off",
            f"{t['n_params']:,}",
            f"{t['n_params_non_embedding']:,}",
            f"{t['flops_per_token']:,.0f}",
            "-" if t["state_size"] is None else f"{t['state_size']:,}",
        )
    _console().print(table)
    print("FLOPs/token: forward pass, matrix products counted by torch plus each mixer's declared element-wise work")
    print("state: numbers per sequence a decoder carries between tokens ('-': grows with the sequence)")
    for variant, search in study.searches.items():
        print(f"search {variant}: {search.describe()}; its final seeds train with the best setting")
    print("model dicts (mixer options, ffn type) in full: ablate plan --json")
    return 0


def _searched(trial) -> dict | None:
    return None if trial.search is None else trial.search.model_dump(mode="json", by_alias=True, exclude_none=True)


def _compare(args) -> int:
    from ablate import compare, tracking
    from ablate.compare import console, report, tables

    lower = tables.lower_is_better(args.metric, args.lower_is_better)
    _, uri = _store(args)
    if args.at and not args.scaling:
        raise AblateError("--at: give it with --scaling (it evaluates the fitted laws)")
    found = compare.gather(uri, args.study, args.metric, args.baseline, lower, args.check, args.at)
    if (args.scaling or args.part in ("laws", "crossings", "predictions")) and found.scaling is None:
        why = (
            "it has one size (a scaling study lists its sizes in budget:)"
            if lower
            else f"laws are fitted to a loss, and {args.metric} is higher-is-better"
        )
        raise AblateError(f"--scaling: study {found.study!r} has no scaling laws: {why}")
    for note in found.notes:
        print(f"ablate: warning: {note}", file=sys.stderr)
    if not args.no_report:
        ui = uri if uri.startswith("http") else None  # a tracking server's UI: the report links to its runs
        written = report.write(found, args.results / found.study, ui)
        logged = report.log(tracking.client(uri), found, written)
        where = "; also in MLflow, under the study run's artifacts" if logged else ""
        print(f"report: {written[-1]} (plots beside it{where})", file=sys.stderr)
    if args.format != "table":
        part = {"variants": found.table, "contrasts": found.contrasts, "expectations": found.checks}.get(args.part)
        print(tables.render(part if part is not None else getattr(found.scaling, args.part), args.format))
    elif args.scaling:
        console.print_scaling(found, _console())
    else:
        console.print_comparison(found, _console(), args.wide)
    return 1 if args.check and not found.checks["held"].all() else 0


def _ui(args) -> int:
    from ablate import tracking, ui

    port = args.port or ui.free_port()
    if args.optuna:
        return _optuna_ui(args, port)
    _results, uri = _store(args)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise AblateError(f"no store at {uri} yet: run a study first")
    client = tracking.client(uri)
    name = args.study or tracking.latest_study(client)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise AblateError(f"no study named {name!r} in {uri}")
    page = tracking.runs_page(experiment.experiment_id, view=tracking.VIEW_TAG in experiment.tags)
    print(f"study {name}; store {uri}", file=sys.stderr)
    return ui.serve(ui.mlflow_server(uri, port, args.workers), port, "/health", page, "MLflow UI")


def _optuna_ui(args, port: int) -> int:
    """optuna-dashboard on the study's search storage (each variant's search is study NAME/VARIANT)."""
    from ablate import ui
    from ablate.run.prepare import default_storage

    storage = args.storage or default_storage(args.results)
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        raise AblateError(f"no Optuna storage at {storage} yet: run a study with a search first")
    print(f"Optuna storage {storage}: each variant's search is the study STUDY/VARIANT", file=sys.stderr)
    return ui.serve(ui.optuna_dashboard(storage, port), port, "/api/meta", "/dashboard", "Optuna dashboard")


AUDIT_SHAPE = {
    "vocab_size": 256,
    "context": 64,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 2,
    "qkv_dim": 32,
    "ffn_dim": 64,
}


def _audit(args) -> int:
    """Exit 1 when a model leaks, unless the study says allow_leaky: true."""
    from rich.table import Table

    from ablate import audit
    from ablate.mixers import registry
    from ablate.plan import study as study_mod

    if not args.study and not args.variant:
        raise AblateError("audit what? give a study file or --variant NAME")
    leaks, allowed = {}, False
    if args.study:
        study = study_mod.load(args.study, data_source=args.data)
        leaks, allowed = audit.audit_study(study), study.config.allow_leaky
    for name in args.variant:
        registry.mixer_class(name)  # an unknown name is an error with a suggestion
        leaks[name] = audit.max_leak({"mixer": name, **AUDIT_SHAPE})
    table = Table(title=f"causality audit (tolerance {audit.TOLERANCE:g})")
    for col in ("variant", "causal", "largest logit change"):
        table.add_column(col, justify="right" if col.startswith("largest") else "left")
    for name, leak in leaks.items():
        table.add_row(name, "yes" if audit.is_causal(leak) else "NO", f"{leak:.2e}")
    _console().print(table)
    return 1 if audit.leaking(leaks) and not allowed else 0


BENCH_VARIANTS = ("mha", "aft-simple", "retention")


def _bench(args) -> int:
    """Bench each variant; print a table (or JSON) with the measured matmul peak beside it."""
    import torch

    from ablate import bench
    from ablate.train.trainer import device_named

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise AblateError("--device cuda: no CUDA device is available here")
    overrides = dict(_setting(text) for text in args.model)
    train = {"device": args.device, "compile": args.compile}
    if args.batch_size:
        train["batch_size"] = args.batch_size
    targets = _bench_targets(args, overrides, train)
    device = device_named(args.device)
    peak, bandwidth = bench.matmul_peak(device), bench.stream_bandwidth(device)
    rows = []
    for name, model, train_cfg in targets:
        if args.parallel > 1:
            row = bench.measure_parallel(name, model, train_cfg, args.steps, args.warmup, args.parallel)
            row["single_tokens_per_s"] = bench.measure(name, model, train_cfg, args.steps, args.warmup)["tokens_per_s"]
            row["speedup_over_single"] = row["tokens_per_s"] / row["single_tokens_per_s"]
        else:
            row = bench.measure(name, model, train_cfg, args.steps, args.warmup)
        row = bench.roofline(row, peak, bandwidth)
        rows.append(row)
        if not args.json:
            print(f"{name}: {row['tokens_per_s']:,.0f} tokens/s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    bench.print_table(rows, device, args.parallel > 1, _console())
    return 0


def _setting(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise AblateError(f"--model {text!r}: expected KEY=VALUE, e.g. --model n_layers=2")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise AblateError(f"--model {text!r}: the value is not valid YAML") from None


def _bench_targets(args, overrides: dict, train: dict) -> list[tuple[str, dict, dict]]:
    """(name, model dict, train dict) per variant: a study's planned trials, or registered mixers
    at the default shape (the Strawberry seed's), with --model on top and checked like a study's."""
    from pydantic import ValidationError

    from ablate.config import ModelConfig, first_error
    from ablate.errors import did_you_mean
    from ablate.mixers import registry
    from ablate.plan import study as study_mod
    from ablate.plan.resources import check_fits

    if args.study:
        study = study_mod.load(args.study)
        first = {t.variant: t for t in reversed(study.trials)}
        names = args.variant or list(dict.fromkeys(t.variant for t in study.trials))
        unknown = [n for n in names if n not in first]
        if unknown:
            raise AblateError(f"--variant {unknown[0]!r} is not a variant of {study.name}: {', '.join(first)}")
        targets = [(n, {**first[n].model, **overrides}, {**first[n].train, **train}) for n in names]
    else:
        targets = [(n, {"mixer": n, **overrides}, dict(train)) for n in args.variant or BENCH_VARIANTS]
    for name, model, train_cfg in targets:
        registry.mixer_class(model.get("mixer", ""))  # an unknown name is an error with a suggestion
        try:
            cfg = ModelConfig(**model)
        except ValidationError as e:
            loc, msg = first_error(e)
            if msg == "unknown key":
                msg += did_you_mean(str(loc[-1]), ModelConfig.model_fields)
            raise AblateError(f"{name}: model{''.join(f'.{p}' for p in loc)}: {msg}") from None
        try:
            check_fits(cfg, train_cfg.get("batch_size", 16), args.device)
        except AblateError as e:
            raise AblateError(f"{name}: {e}") from None
    return targets


def _sample(args) -> int:
    import tempfile

    from ablate import sample, tracking

    if args.temperature < 0:
        raise AblateError(f"--temperature must be 0 or more, got {args.temperature}")
    _, uri = _store(args)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = sample.load(tracking.client(uri), args.run_id, Path(tmp))
    prompt = sample.prompt_ids(tokenizer, args.prompt)
    if max(prompt) >= model.cfg.vocab_size or min(prompt) < 0:
        raise AblateError(f"--prompt: token ids must lie in 0..{model.cfg.vocab_size - 1}")
    ids = sample.generate(model, prompt, args.tokens, args.temperature, args.top_k, args.seed)
    text = tokenizer.decode(ids) if tokenizer is not None else " ".join(map(str, ids))
    if args.json:
        print(json.dumps({"prompt_ids": prompt, "generated_ids": ids, "text": text}))
    else:
        print(args.prompt + (text if tokenizer is not None else " " + text))
    return 0


def _import(args) -> int:
    from ablate import evaluate, tracking

    results, uri = _store(args)
    _check_writable(results)
    run_id = evaluate.import_strawberry(tracking.Tracker(uri, results), args.checkpoint, args.study)
    print(f"imported {args.checkpoint} as run {run_id} in experiment {args.study}")
    print(f"next: ablate eval {run_id} --data STUDY.yaml|TOKENS.bin{_store_args(args)}")
    return 0


def _eval(args) -> int:
    import tempfile

    from ablate import evaluate, tracking

    results, uri = _store(args)
    tracker = tracking.Tracker(uri, results)
    model = evaluate.load_model(tracker.client, args.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = evaluate.eval_data(tracker.client, args.run_id, args.data, model.cfg.vocab_size, results, Path(tmp))
    metrics = evaluate.evaluate(model, corpus, args.batch_size, args.batches, args.device)
    params = {
        "data.source": corpus.meta["source"],
        "data.fingerprint": corpus.meta["fingerprint"],
        "batch_size": str(args.batch_size),
        "batches": str(args.batches),
    }
    eval_id = evaluate.log_evaluation(tracker, args.run_id, metrics, params)
    if args.json:
        print(json.dumps({"run_id": args.run_id, "evaluation_run_id": eval_id, **metrics}))
        return 0
    print(corpus.describe())
    print(f"val_loss {metrics['val_loss']:.4f}   val_accuracy {metrics['val_accuracy']:.4f}")
    if "prefix_val_loss" in metrics:
        print(
            f"audit: LEAKS (a logit moved by {metrics['max_leak']:.2e} when only tokens it must not see changed): "
            "its teacher-forced losses are not next-token losses"
        )
        print(
            f"prefix_val_loss {metrics['prefix_val_loss']:.4f} (honest: each position from its own prefix alone)   "
            f"val_loss_at_prefix_positions {metrics['val_loss_at_prefix_positions']:.4f} (teacher-forced, same positions)"
        )
    else:
        print(f"audit: causal (largest logit change {metrics['max_leak']:.1e} where none may move)")
    print(f"logged as evaluation run {eval_id}, nested under run {args.run_id}")
    return 0


def _variants(args) -> int:
    from ablate.mixers import registry

    rows = [{"name": n, "description": registry.mixer_class(n).description} for n in registry.variants()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['description']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

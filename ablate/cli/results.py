"""Commands on a study's results: compare, ui."""

import argparse
import sys

from ablate.cli.common import (
    console,
    database_url,
    existing_storage,
    port,
    positive,
    positive_number,
    store_options,
    stored,
    study_name,
)
from ablate.core.errors import AblateError

COMPARE_TERMS = """terms (the glossary in docs/statistics.md says more):
  paired        tested on the per-seed differences (one seed: same init and data order); else Welch's t-test
  Holm          p-values corrected for the number of comparisons in a table, so that α = 0.05 holds for it
  d_z           paired effect size: mean difference / standard deviation of the differences
  Hedges' g     unpaired effect size: difference of means / pooled standard deviation, small-sample corrected
  MDE           the smallest true difference the test would detect with 80% power at Holm's strictest level
  not converged loss still falling at the end, or within 5% of the unigram entropy: a verdict on speed only"""


def add_commands(sub) -> None:
    _compare_parser(sub)
    _ui_parser(sub)


def _compare_parser(sub) -> None:
    compare = sub.add_parser(
        "compare",
        help="a table of variants: mean, 95%% CI, tests against the baseline (paired by seed, Holm)",
        epilog=COMPARE_TERMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("--study", type=study_name, help="study name (default: the one that ran last)")
    compare.add_argument(
        "--metric", default="val_loss", help="the logged metric to compare, e.g. val_accuracy (default: val_loss)"
    )
    compare.add_argument("--baseline", help="variant to compare against (default: the study's)")
    _compare_output(compare)
    _compare_scaling(compare)
    compare.add_argument(
        "--check", action="store_true", help="exit 1 when one of the study's expectations (expect:) does not hold"
    )
    direction = compare.add_mutually_exclusive_group()
    for flag, lower in (("--lower-is-better", True), ("--higher-is-better", False)):
        direction.add_argument(
            flag,
            action="store_const",
            const=lower,
            dest="lower_is_better",
            help="the metric's direction (known for losses, accuracy and speed)",
        )
    store_options(compare)
    compare.set_defaults(func=compare_command)


def _compare_output(compare) -> None:
    """What compare prints and writes."""
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
        "--wide", action="store_true", help="every column in the terminal (default: the decisive ones, 120 wide)"
    )
    compare.add_argument(
        "--no-report", action="store_true", help="skip the plots and report.html (default: RESULTS/STUDY/)"
    )


def _compare_scaling(compare) -> None:
    """A scaling study's laws."""
    compare.add_argument(
        "--scaling",
        action="store_true",
        help="a scaling study's fitted laws L = E + A·x^(−α) per variant, with bootstrap intervals, and where "
        "they cross",
    )
    compare.add_argument(
        "--at",
        type=positive_number,
        nargs="+",
        default=[],
        metavar="PARAMS",
        help="with --scaling: each law's prediction at these non-embedding parameter counts (e.g. 1e7)",
    )


def _ui_parser(sub) -> None:
    ui = sub.add_parser(
        "ui", help="start the MLflow UI on the store (127.0.0.1) and print its URL, on the study, once it answers"
    )
    ui.add_argument("--study", type=study_name, help="the study the URL opens on (default: the one that ran last)")
    ui.add_argument("--port", type=port, default=0, help="port on 127.0.0.1, 1-65535 (default: a free one)")
    ui.add_argument("--workers", type=positive, default=1, help="MLflow server worker processes (default 1)")
    ui.add_argument(
        "--optuna",
        action="store_true",
        help="Optuna's dashboard on the search storage instead: history, importances, parallel coordinates "
        '(pip install "ablate[dashboard]")',
    )
    ui.add_argument(
        "--storage",
        type=database_url,
        help="with --optuna: the Optuna storage URL (default: sqlite:///RESULTS/optuna.db)",
    )
    store_options(ui)
    ui.set_defaults(func=ui_command)


def compare_command(args) -> int:
    where = stored(args)
    from ablate import compare
    from ablate.compare import console as draw
    from ablate.compare import report, tables
    from ablate.core.schema import lower_is_better
    from ablate.tracking import store

    lower = lower_is_better(args.metric, args.lower_is_better)
    if args.at and not args.scaling:
        raise AblateError("--at: give it with --scaling (it evaluates the fitted laws)")
    found = compare.gather(where, args.study, args.metric, args.baseline, lower, args.check, args.at)
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
        ui = where if where.startswith("http") else None  # a tracking server's UI: the report links to its runs
        written = report.write(found, args.results / found.study, ui)
        logged = report.log(store.client(where), found, written)
        also = "; also in MLflow, under the study run's artifacts" if logged else ""
        print(f"report: {written[-1]} (plots beside it{also})", file=sys.stderr)
    if args.format != "table":
        part = {"variants": found.table, "contrasts": found.contrasts, "expectations": found.checks}.get(args.part)
        print(tables.render(part if part is not None else getattr(found.scaling, args.part), args.format))
    elif args.scaling:
        draw.print_scaling(found, console())
    else:
        draw.print_comparison(found, console(), args.wide)
    return 1 if args.check and not found.checks["held"].all() else 0


def ui_command(args) -> int:
    from ablate.cli import ui
    from ablate.tracking import store
    from ablate.tracking.views import VIEW_TAG, runs_page

    port = ui.port_to_serve(args.port)
    if args.optuna:
        return _optuna_ui(args, port)
    where = stored(args)
    client = store.client(where)
    name = args.study or store.latest_study(client)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise AblateError(f"no study named {name!r} in {where}")
    page = runs_page(experiment.experiment_id, view=VIEW_TAG in experiment.tags)
    print(f"study {name}; store {where}", file=sys.stderr)
    return ui.serve(ui.mlflow_server(where, port, args.workers), port, "/health", page, "MLflow UI")


def _optuna_ui(args, port: int) -> int:
    """optuna-dashboard on the study's search storage (each variant's search is study NAME/VARIANT)."""
    from ablate.cli import ui
    from ablate.run.workers import Stores

    storage = existing_storage(
        Stores.at(args.results, "", args.storage).storage, "Optuna storage", "run a study with a search first"
    )
    print(f"Optuna storage {storage}: each variant's search is the study STUDY/VARIANT", file=sys.stderr)
    return ui.serve(ui.optuna_dashboard(storage, port), port, "/api/meta", "/dashboard", "Optuna dashboard")

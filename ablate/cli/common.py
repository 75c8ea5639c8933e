"""What several commands share: the store and data options, argument types, the console."""

import argparse
import math
import os
import sys
from pathlib import Path

from ablate.errors import AblateError

DEFAULT_RESULTS = "results"
SMOKE_HELP = "the smoke form: 20 steps, the first seed, experiment NAME-smoke (a quick look on a CPU)"


def store_options(cmd) -> None:
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


def data_option(cmd) -> None:
    cmd.add_argument(
        "--data", metavar="PATH", help="train on this text or token array instead of the study's data.source"
    )


def work_options(cmd) -> None:
    """What `run` and `worker` share: the study, its stores and its checkpoints."""
    cmd.add_argument("study", type=Path, help="the study's YAML file")
    cmd.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    data_option(cmd)
    cmd.add_argument(
        "--storage",
        help="Optuna storage URL, which also holds the study's work list (default: sqlite:///RESULTS/optuna.db)",
    )
    cmd.add_argument(
        "--checkpoints",
        type=Path,
        help="checkpoint directory, shared by all workers (default: RESULTS/checkpoints)",
    )
    store_options(cmd)


def console():
    """A rich console; when output is not a terminal, wide enough that tables are not cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def uri(args) -> str:
    from ablate.tracking.store import tracking_uri

    return tracking_uri(args.results, args.tracking_uri)


def stored(args) -> str:
    """The store of a command that reads one: checked first, so that asking an empty folder is one
    quick line (opening a local store that is not there would create it)."""
    found = uri(args)
    if found.startswith("sqlite:///") and not Path(found.removeprefix("sqlite:///")).exists():
        raise AblateError(f"no results in {args.results} (no store {found} yet): run a study first, or give --results")
    return found


def store_hint(args) -> str:
    """The store flags to repeat in the hints printed after a command."""
    out = "" if str(args.results) == os.environ.get("ABLATE_RESULTS", DEFAULT_RESULTS) else f" --results {args.results}"
    return out + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else "")


def check_writable(results: Path) -> None:
    existing = next(p for p in [results, *results.resolve().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise AblateError(f"--results: {results} is not a writable directory")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def study_name(text: str) -> str:
    """A study (MLflow experiment) name as `ablate run` allows it: it names a folder of the store."""
    from ablate.config import NAME, NAME_RULE

    if not NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a study name is {NAME_RULE}")
    return text

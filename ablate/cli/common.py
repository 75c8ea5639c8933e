"""What several commands share: the store and data options, argument types, the console."""

import argparse
import math
import os
import sys
from pathlib import Path

from ablate.core.errors import AblateError

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
        "--tracking-uri",
        type=tracking_uri,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else RESULTS/mlflow.db)",
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
        type=database_url,
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


def database_url(text: str) -> str:
    """A database URL whose dialect is installed (sqlite:///PATH, postgresql+psycopg://...)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(text).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a database URL this machine can open (sqlite:///PATH, postgresql+psycopg://USER@HOST/DB)"
        ) from None
    return text


def tracking_uri(text: str) -> str:
    """An MLflow tracking URI: a server (http, https, databricks), a folder (a path or file:),
    or a database URL."""
    scheme = text.partition("://")[0] if "://" in text else ""
    if scheme in ("", "file", "http", "https", "databricks"):
        return text
    try:
        return database_url(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an MLflow tracking URI this machine can open "
            "(a folder, http(s)://HOST:PORT, sqlite:///PATH, postgresql+psycopg://USER@HOST/DB)"
        ) from None


def existing_storage(storage: str, what: str, hint: str) -> str:
    """A storage URL a read-only command reads: a SQLite file must be there already (opening one
    that is not would create it)."""
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        raise AblateError(f"no {what} at {storage} yet: {hint}")
    return storage


def check_writable(results: Path, flag: str = "--results") -> None:
    existing = next(p for p in [results, *results.resolve().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise AblateError(f"{flag}: {results} is not a writable directory")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def port(text: str) -> int:
    """A TCP port to listen on."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {text!r}")
    return int(text)


def ray_address(text: str) -> str:
    """A Ray cluster's address as ray.init takes it: HOST:PORT, ray://HOST:PORT (Ray Client) or auto."""
    host, _, number = text.removeprefix("ray://").rpartition(":")
    if text != "auto" and not (host and number.isdigit() and 1 <= int(number) <= 65535):
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, ray://HOST:PORT or auto, got {text!r}")
    return text


def cores(text: str, option: str = "--threads") -> int:
    """A count of this machine's CPU cores: more threads than cores is a crash (a segfault at
    100,000), not a speed-up."""
    value, available = positive(text), os.cpu_count() or 1
    if value > available:
        raise AblateError(f"{option} {value}: this machine has {available} CPU cores")
    return value


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
    from ablate.core.config import name_problem

    problem = name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: a study name {problem}")
    return text


def fraction(text: str) -> float:
    """A share in (0, 1]."""
    value = positive_number(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text!r}")
    return value


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    return key, value


def executor_options(cmd) -> None:
    """Where `run` starts its workers, and what each gets."""
    from ablate.run.executors import NAMES

    cmd.add_argument(
        "--executor",
        choices=NAMES,
        default="local",
        help="what starts the workers: processes of this machine (default), Ray tasks, a SLURM job array",
    )
    cmd.add_argument("--workers", type=positive, default=1, help="workers to start (default 1: this process trains)")
    cmd.add_argument(
        "--gpus-per-worker",
        type=positive_number,
        default=0.0,
        help="GPUs each worker gets; a fraction packs workers on one GPU (0.25: four to a GPU) (default 0: none)",
    )
    cmd.add_argument(
        "--cpus-per-worker", type=positive, help="CPU cores each worker gets (default: local, the cores split; else 1)"
    )
    cmd.add_argument(
        "--ray-address",
        type=ray_address,
        help="ray: the cluster to use, HOST:PORT, ray://HOST:PORT or auto (default: a Ray started on this machine)",
    )
    slurm = cmd.add_argument_group("slurm")
    slurm.add_argument("--partition", help="the partition to submit to (default: the cluster's)")
    slurm.add_argument(
        "--time", type=positive, dest="time_min", help="each job's time limit in minutes (default: the partition's)"
    )
    slurm.add_argument(
        "--gpus-per-node", type=positive, help="GPUs each job asks for (default: its workers' --gpus-per-worker)"
    )
    slurm.add_argument(
        "--slurm-extra",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, repeatable (--slurm-extra account=lab) (default: none)",
    )
    slurm.add_argument(
        "--pack", type=positive, default=1, help="workers inside each 1-GPU job, sharing its GPU (default 1)"
    )
    slurm.add_argument("--detach", action="store_true", help="submit and return; follow with `ablate status`")


def launch(args, spec):
    """The workers `run` starts (None: it trains in its own process)."""
    from ablate.run.executors import devices_per_worker, executor
    from ablate.run.executors.base import Options, Resources
    from ablate.run.schedule import Launch

    local_only = args.executor == "local"
    if args.executor != "slurm" and (args.partition or args.time_min or args.gpus_per_node or args.slurm_extra):
        raise AblateError("--partition, --time, --gpus-per-node and --slurm-extra are for --executor slurm")
    if args.executor != "slurm" and (args.pack > 1 or args.detach):
        raise AblateError("--pack and --detach are for --executor slurm")
    if args.ray_address and args.executor != "ray":
        raise AblateError("--ray-address is for --executor ray")
    if local_only and args.cpus_per_worker:
        cores(str(args.cpus_per_worker), "--cpus-per-worker")
    resources = Resources(args.cpus_per_worker, args.gpus_per_worker)
    if spec.devices > 1:
        resources = devices_per_worker(spec.devices, args, resources)
    elif local_only and args.workers == 1 and resources == Resources():
        return None
    options = Options(
        args.ray_address,
        args.partition,
        args.time_min,
        args.gpus_per_node,
        dict(args.slurm_extra),
        args.pack,
        args.detach,
    )
    return Launch(executor(args.executor, options), spec, args.workers, resources)


def contexts(text: str) -> tuple[int, ...]:
    """256,1k,4k: positive token counts, k meaning 1,024."""
    import argparse

    out = []
    for part in text.split(","):
        part = part.strip().lower()
        digits, scale = (part[:-1], 1024) if part.endswith("k") else (part, 1)
        if not digits.isdigit() or int(digits) * scale < 64:
            raise argparse.ArgumentTypeError(f"{part!r} is not a context of at least 64 tokens (256, 4k, ...)")
        out.append(int(digits) * scale)
    return tuple(sorted(set(out)))

"""`ablate` command line: parsing and dispatch only; each command group is a module of its own
(study: run, worker, plan, audit; results: compare, ui; models: bench, sample, import, export,
variants; scores: eval), and what a command prints is drawn where the thing it draws lives."""

import argparse
import logging
import signal
import sys
import threading

import ablate
from ablate.cli import models, results, scores, study
from ablate.core.errors import AblateError, Terminated, environment_error


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # MLflow logs every database error it catches with its traceback; the one-line error below says
    # what the database said
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM (what schedulers, `timeout` and systemd send) ends a command as Ctrl-C does
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return args.func(args) or 0
    except AblateError as e:
        print(f"ablate: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("ablate: terminated (SIGTERM); rerun the same command to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("ablate: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        said = environment_error(e)
        if said is None:
            raise
        print(f"ablate: error: {said}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)  # called in-process (tests, notebooks): leave it as found


def _terminate(signum, frame) -> None:
    raise Terminated


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is one `--help` away); its subcommands too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="ablate", description="Architecture ablations for small language models.")
    p.add_argument("--version", action="version", version=f"ablate {ablate.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (study, results, models, scores):
        group.add_commands(sub)
    return p

"""What the CLI turns into a one-line message and exit code 2: the user's errors, and failures
of the stores and disks under a study; anything else is a bug and keeps its traceback."""

import difflib
import errno
import os
import shutil


class AblateError(Exception):
    """A problem with the user's input (study, data, store) rather than a bug."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, ended as Ctrl-C ends a study: the runs in flight KILLED, their claims handed back."""


def first_line(e: BaseException) -> str:
    """What an exception says, in one line (its type when it says nothing)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def environment_error(e: BaseException) -> str | None:
    """A failure of a store or of the disk under it, in one line; None for anything else (a bug)."""
    from mlflow.exceptions import MlflowException

    database = _database_error(e)
    if isinstance(e, MlflowException):
        return f"MLflow store: {first_line(database.orig if database is not None else e)}"
    if database is not None:
        cause = first_line(database.orig or database)
        return f"the study database (--storage: the Optuna storage and work list) failed: {cause}. " + (
            "Free space on its disk and rerun: the study resumes"
            if "full" in cause
            else "A database deleted, replaced or damaged under a study does this: restore it, or start again "
            "with a fresh --results"
        )
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return None


def said(e: BaseException) -> str:
    """The one line a run's `ablate.failure` tag keeps of an exception."""
    return environment_error(e) or first_line(e)


def _database_error(e: BaseException):
    """The database's own error behind e (what the DBAPI said, e.g. "database or disk is full"),
    however MLflow, Optuna or SQLAlchemy's "Query-invoked autoflush" wrapped it; None if none."""
    import sqlalchemy.exc

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sqlalchemy.exc.DBAPIError):
            return e
        e = e.__cause__ or e.__context__
    return None


def full_disk(path, needed: int) -> OSError | None:
    """ENOSPC for path when its disk has less room than needed: numpy and torch report a full
    disk only as a short write or "unexpected pos"."""
    if shutil.disk_usage(path).free < needed:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def did_you_mean(word: str, choices) -> str:
    """ " (did you mean 'x'?)" for the closest of choices, or nothing when none is close. Of
    the close choices, one with the same letters wins: 'mah' is 'mha' typed in the wrong order."""
    close = difflib.get_close_matches(word, list(choices), n=3)
    swapped = [c for c in close if sorted(c) == sorted(word)]
    return f" (did you mean {(swapped or close)[0]!r}?)" if close else ""

"""What the CLI turns into a one-line message and exit code 2: the user's errors, and failures
of the stores and disks under a study; anything else is a bug and keeps its traceback."""


class AblateError(Exception):
    """A problem with the user's input (study, data, store) rather than a bug."""


def first_line(e: BaseException) -> str:
    """What an exception says, in one line (its type when it says nothing)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def environment_error(e: BaseException) -> str | None:
    """A failure of a store or of the disk under it, in one line; None for anything else (a bug)."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException
    from optuna.exceptions import StorageInternalError

    if isinstance(e, StorageInternalError) and isinstance(e.__cause__, sqlalchemy.exc.SQLAlchemyError):
        e = e.__cause__
    if isinstance(e, MlflowException):
        return f"MLflow store: {first_line(e)}"
    if isinstance(e, sqlalchemy.exc.SQLAlchemyError):
        cause = first_line(getattr(e, "orig", None) or e)
        return (
            f"the study database (--storage: the Optuna storage and work list) failed: {cause}. A database "
            "deleted, replaced or damaged under a study does this: restore it, or start again with a fresh --results"
        )
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return None


def said(e: BaseException) -> str:
    """The one line a run's `ablate.failure` tag keeps of an exception."""
    return environment_error(e) or first_line(e)

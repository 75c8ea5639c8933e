"""Failures of the stores and disks under a study, said in one line of what actually happened."""

import sqlite3

import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from ablate.core.errors import did_you_mean, environment_error


def _autoflush(message: str) -> sqlalchemy.exc.OperationalError:
    """SQLAlchemy's error as a Query-invoked autoflush raises it: its first line says nothing."""
    error = sqlalchemy.exc.OperationalError("INSERT INTO tags ...", {}, sqlite3.OperationalError(message))
    error.args = ("(raised as a result of Query-invoked autoflush; consider using a session.no_autoflush block)",)
    return error


def _raised(outer: Exception, cause: BaseException) -> Exception:
    """outer, raised `from` cause, as MLflow raises its store errors."""
    with pytest.raises(type(outer)) as caught:
        try:
            raise cause
        except type(cause) as e:
            raise outer from e
    return caught.value


def test_what_the_database_said_comes_through_mlflow_and_sqlalchemy():
    mlflow_error = _raised(
        MlflowException(message="(raised as a result of Query-invoked autoflush; ...)"),
        _autoflush("database or disk is full"),
    )
    assert environment_error(mlflow_error) == "MLflow store: database or disk is full"
    said = environment_error(_autoflush("no such table: ablate_claims"))
    assert said.startswith("the study database (--storage: the Optuna storage and work list) failed: no such table")
    assert "deleted, replaced or damaged" in said
    assert "Free space on its disk and rerun" in environment_error(_autoflush("database or disk is full"))


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("x"), RuntimeError("unexpected pos 1 vs 2")])
def test_anything_else_is_a_bug_and_keeps_its_traceback(error):
    assert environment_error(error) is None


def test_a_transposed_name_is_suggested_over_an_equally_close_one():
    assert did_you_mean("mah", ["moa", "mha"]) == " (did you mean 'mha'?)"
    assert did_you_mean("windw", ["window", "rope"]) == " (did you mean 'window'?)"
    assert did_you_mean("xyz", ["mha"]) == ""

"""The MLflow store as several workers write it at once."""

import pytest
from mlflow.entities import Dataset
from mlflow.exceptions import MlflowException

from ablate.tracking.store import Tracker


def test_a_worker_that_loses_the_race_to_log_the_dataset_links_the_one_logged(tmp_path):
    """MLflow looks a dataset up, then inserts it: when two workers log it at once the second
    insert is refused; that worker's run must still get the dataset, not fail."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first, second = Tracker(uri, tmp_path), Tracker(uri, tmp_path)
    exp_id = first.experiment("race", {})
    runs = [first.client.create_run(exp_id).info.run_id for _ in range(2)]
    data = Dataset(name="mqar", digest="abc123", source_type="generated", source="{}")
    original = second.client.log_inputs

    def lose_the_race(run_id, datasets):
        second.client.log_inputs = original
        first.log_dataset(runs[0], data)  # the other worker inserts it between our lookup and insert
        raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, ...")

    second.client.log_inputs = lose_the_race
    second.log_dataset(runs[1], data)
    for run_id in runs:
        assert [d.dataset.digest for d in first.client.get_run(run_id).inputs.dataset_inputs] == ["abc123"]


def test_other_store_errors_are_not_swallowed(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path)
    data = Dataset(name="mqar", digest="abc123", source_type="generated", source="{}")
    with pytest.raises(MlflowException):
        tracker.log_dataset("no-such-run", data)

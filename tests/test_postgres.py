"""Scale-out on a real engine: the Optuna storage (and the work list) on PostgreSQL, and an MLflow
tracking server whose backend store is PostgreSQL, shared by two workers.

The server comes from $ABLATE_TEST_PG (an account that may create databases; default: the one
`.ci/run` makes). Without a server these tests skip, unless ABLATE_REQUIRE_PG=1 (as in CI), where
they fail.
"""

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from ablate.cli.ui import free_port, stop_group
from ablate.run import claims
from tests.test_resume import assert_each_trial_once, two_workers

pytestmark = pytest.mark.slow  # a PostgreSQL server


def test_claims_on_postgres_let_one_worker_win(database):
    url = database()
    first, second = claims.WorkList(url, "s"), claims.WorkList(url, "s")
    second.worker = "elsewhere:1"  # another machine's worker
    claim = first.claim("u")
    assert claim is not None and second.claim("u") is None
    first.end(claim, claims.OPEN)  # let go (Ctrl-C): anyone may resume it
    taken = second.claim("u")
    assert taken is not None and taken.attempts == 2 and not first.beat(claim)


@pytest.fixture
def mlflow_server(database, tmp_path):
    """An MLflow tracking server backed by PostgreSQL, serving artifacts from tmp_path."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", database()]
    cmd += ["--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    server = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop_group(server)
            pytest.fail(f"mlflow server did not start: {server.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    yield url
    stop_group(server)


def test_two_workers_on_postgres_and_an_mlflow_server_train_each_trial_once(database, mlflow_server, tmp_path):
    assert_each_trial_once(*two_workers(tmp_path, database(), mlflow_server))

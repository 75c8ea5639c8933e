import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from ablate.core.config import DataConfig
from ablate.data.corpus import prepare

# A small slice of the default corpus: the stdlib is on every machine, so tests need nothing else.
TINY_DATA = {"source": "stdlib", "vocab_size": 512, "max_bytes": 300_000}


def write_study(directory: Path, text: str, name: str = "study.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


TINY_STUDY = """\
name: tiny
data: {source: stdlib, vocab_size: 512, max_bytes: 300000}
model: {context: 32, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn_dim: 64}
train: {steps: 30, batch_size: 8, warmup: 5, eval_every: 15, eval_batches: 2, log_every: 5}
variants:
  - {name: mha, model: {mixer: mha}}
  - {name: aft, model: {mixer: aft-simple, ffn: false}}
seeds: [0, 1]
"""


@pytest.fixture
def own_store(monkeypatch):
    """`main` in this process, on the results folder's own store: another test may have set
    MLFLOW_TRACKING_URI (mlflow.set_tracking_uri exports it)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return prepare(DataConfig(**TINY_DATA), tmp_path_factory.mktemp("cache"))


def clean_env() -> dict[str, str]:
    """The environment for `ablate` subprocesses, without the MLFLOW_TRACKING_URI that
    mlflow.set_tracking_uri exports in this process."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONUNBUFFERED": "1"}


def run_ablate(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed `ablate` command, run to its end, its output captured."""
    return subprocess.run(
        ["ablate", *args], check=False, capture_output=True, text=True, timeout=timeout, env=clean_env()
    )


def run_python(script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """A fresh Python process running `script`, its output captured."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """The tiny study, with a contrast, run once by the installed `ablate` command into a fresh
    results dir (the tests that read it share it: it is the slowest thing they need)."""
    tmp = tmp_path_factory.mktemp("e2e")
    study = write_study(tmp, TINY_STUDY + "contrasts: [[aft, mha]]\n")
    results = tmp / "results"
    proc = run_ablate("run", str(study), "--results", str(results))
    assert proc.returncode == 0, proc.stderr
    return study, results, proc.stdout


CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = {"width": 1400, "height": 1000}


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's), driven by playwright. Without it the test skips, unless
    ABLATE_REQUIRE_BROWSER=1 (set by .ci/run)."""
    if CHROMIUM is None:
        if os.environ.get("ABLATE_REQUIRE_BROWSER") == "1":
            pytest.fail("ABLATE_REQUIRE_BROWSER=1 but no Chromium here (apt-get install chromium)")
        pytest.skip("no Chromium here (apt-get install chromium); CI sets ABLATE_REQUIRE_BROWSER=1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


ADMIN = os.environ.get("ABLATE_TEST_PG", "postgresql+psycopg://ablate:ablate@127.0.0.1:5432/postgres")


@pytest.fixture
def database():
    """A fresh database on the server (dropped afterwards); yields a function making more."""
    try:
        admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
        admin.connect().close()
    except (ImportError, sa.exc.SQLAlchemyError) as e:  # no driver, no server, or no account
        if os.environ.get("ABLATE_REQUIRE_PG") == "1":
            pytest.fail(f"ABLATE_REQUIRE_PG=1 but PostgreSQL at {ADMIN} does not answer: {e}")
        pytest.skip(f"no PostgreSQL at {ADMIN}")
    made = []

    def make() -> str:
        name = f"ablate_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return admin.url.set(database=name).render_as_string(hide_password=False)

    yield make
    for name in made:
        _drop(admin, name)
    admin.dispose()


def _drop(admin, name: str, tries: int = 40) -> None:
    """Drop a test database. FORCE ends its sessions, but this role may not end an autovacuum
    worker that happens to be in it (PostgreSQL refuses: "must be a member of the role whose
    process is being terminated"); such a worker is done in moments, so the drop is tried again."""
    for attempt in range(tries):
        try:
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except sa.exc.ProgrammingError as e:
            if "member of the role" not in str(e) or attempt == tries - 1:
                raise
            time.sleep(0.25)


def planned_keys(study: Path) -> set[str]:
    """The trial keys a study's plan gives: what every executor must train, each once."""
    from ablate.plan import study as study_mod

    planned = study_mod.load(study)
    return {trial.key(planned.config.data) for trial in planned.trials}


def engine_study(
    name: str, steps: int, seeds: str = "[0, 1]", variants: tuple[str, ...] = ("mha", "aft"), eval_every: int = 20
) -> str:
    """The tiny study the executor tests launch through a real engine: mha and aft-simple (no
    FFN), as long as the test needs its trials to run."""
    lines = {
        "mha": "  - {name: mha, model: {mixer: mha}}",
        "aft": "  - {name: aft, model: {mixer: aft-simple, ffn: false}}",
    }
    return f"""\
name: {name}
data: {{source: stdlib, vocab_size: 512, max_bytes: 300000}}
model: {{context: 32, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn_dim: 64}}
train: {{steps: {steps}, batch_size: 8, warmup: 5, eval_every: {eval_every}, eval_batches: 2, log_every: 5}}
variants:
{chr(10).join(lines[v] for v in variants)}
seeds: {seeds}
"""

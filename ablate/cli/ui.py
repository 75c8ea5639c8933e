"""The study's web UIs: the MLflow UI on the results store (`mlflow server`) and Optuna's
dashboard on the search storage (`optuna-dashboard`), each started in a session of its own, its
URL printed once it answers, and every process of it stopped together however this ends."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ablate.core.errors import AblateError

START_S = 180  # a busy machine takes tens of seconds to import and start the server


def mlflow_server(uri: str, port: int, workers: int) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    return cmd + ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]


def optuna_dashboard(storage: str, port: int) -> list[str]:
    """optuna-dashboard, from `pip install "ablate[dashboard]"`."""
    found = shutil.which("optuna-dashboard") or shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if found is None:
        raise AblateError('--optuna needs optuna-dashboard: pip install "ablate[dashboard]"')
    return [found, storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"]


def serve(cmd: list[str], port: int, health: str, page: str, what: str) -> int:
    """Run the server until Ctrl-C, SIGTERM or its own end; print its address + page once
    `health` answers."""
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # one viewer needs no job consumers
    server = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=sys.stderr)  # stdout: the URL alone
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_served(f"{base}{health}", server)
        print(f"{what}: {base}{page}", flush=True)
        print("(Ctrl-C stops it)", flush=True)
        if code := server.wait():
            raise AblateError(f"the server exited with code {code}")
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop_group(server)


def wait_until_served(url: str, server: subprocess.Popen) -> None:
    """Return once the server answers url; a one-line error when it exits or never answers."""
    deadline = time.monotonic() + START_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if server.poll() is not None:
                raise AblateError(f"the server exited (code {server.returncode}) before it answered") from None
            if time.monotonic() > deadline:
                raise AblateError(f"the server did not answer {url} within {START_S} s") from None
            time.sleep(0.25)


def stop_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process's whole group; SIGKILL whatever is still there after grace_s."""
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while process.poll() is None or _signal_group(process.pid, 0):
        if time.monotonic() > deadline:
            _signal_group(process.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    process.wait()


def _signal_group(pgid: int, sig: int) -> bool:
    """Send sig to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def port_to_serve(port: int) -> int:
    """The port asked for, checked free on 127.0.0.1 (a server already there would answer the
    health check in place of ours), or a free one when none was asked for (0)."""
    if not port:
        return free_port()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise AblateError(f"--port {port} is taken on 127.0.0.1 ({e.strerror}): give another, or none") from None
    return port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""The MLflow UI on a store: `mlflow server` started in a session of its own, its URL printed
once it answers, and every process of it stopped together however this ends."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from ablate.errors import AblateError

START_S = 180  # a busy machine takes tens of seconds to import and start the server


def serve(uri: str, page: str, what: str, port: int = 0, workers: int = 1) -> int:
    """Serve the store until Ctrl-C, SIGTERM or the server's own end; print base URL + page."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # one viewer needs no job consumers
    server = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=sys.stderr)  # stdout: the URL alone
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_served(f"{base}/health", server)
        print(f"MLflow UI: {base}{page}", flush=True)
        print(f"({what}; store {uri}; Ctrl-C stops it)", flush=True)
        return server.wait()
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
                raise AblateError(f"the MLflow server exited (code {server.returncode}) before it answered") from None
            if time.monotonic() > deadline:
                raise AblateError(f"the MLflow server did not answer {url} within {START_S} s") from None
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

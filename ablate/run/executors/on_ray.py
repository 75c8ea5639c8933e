"""Workers as Ray tasks (`pip install "ablate[ray]"`): on the Ray cluster at --ray-address, or
on a Ray started on this machine for the study (bound to loopback), each task with the CPUs and
the GPU share asked. Ray sets each task's CUDA_VISIBLE_DEVICES, which its worker inherits; a task
whose worker dies is retried, and the retry resumes the unit from its checkpoint."""

import os
import secrets
import signal
import socket
import subprocess

from ablate.core.errors import AblateError, Terminated
from ablate.core.processes import sigterm_deferred, watched_by_me
from ablate.run.executors.base import Executor, Resources, shared_stores
from ablate.run.workers import Stores, WorkerSpec

RETRIES = 3  # a task whose worker died is started again this many times
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray binds as it does on a laptop, to 127.0.0.1


class WorkerDied(Exception):
    """The task's `ablate worker` ended with an error or a signal: Ray retries the task."""


def run_worker(argv: list[str]) -> str:
    """The task: one `ablate worker`, on the GPU Ray gave the task; returns that GPU's id."""
    code = subprocess.run(argv, env=watched_by_me(), check=False).returncode
    if code != 0:
        raise WorkerDied(f"ablate worker exited with {code}")
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


class OnRay(Executor):
    name = "ray"

    def __init__(self, address: str | None):
        self.address, self.refs, self.started_here = address, [], False

    def check_stores(self, stores: Stores) -> None:
        """The stores are checked once connected, when the cluster's hosts are known; the cluster's
        address is checked here, before the study writes anything: Ray waits forever on one that
        does not answer."""
        if self.address is None or self.address == "auto":
            return
        host, _, port = self.address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise AblateError(
                f"--ray-address {self.address}: no Ray cluster answers there ({e.strerror or e})"
            ) from None

    def launch(self, spec: WorkerSpec, n: int, resources: Resources, console) -> None:
        address = self.address or "127.0.0.1"
        if address.rsplit(":", 1)[0] in (
            "127.0.0.1",
            "localhost",
        ):  # Ray's single-machine mode: every port on loopback, none on the network
            os.environ.setdefault(LOOPBACK_ONLY, "0")
        try:
            import ray
        except ImportError:
            raise AblateError('--executor ray needs Ray: pip install "ablate[ray]"') from None
        on_sigterm = signal.getsignal(signal.SIGTERM)
        if self.address is None:  # a Ray of this machine's cores, for this study only, on loopback
            # with a token of its own: Ray would otherwise write one to ~/.ray, which later
            # connections to other clusters on this machine would present
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
            self.started_here = True
        else:
            ray.init(address=self.address)
        # Ray's driver takes SIGTERM over (a native dump, then exit 1); ablate's ends the study as Ctrl-C does
        signal.signal(signal.SIGTERM, on_sigterm)
        if not self.started_here and not one_host(ray.nodes(), ray.util.get_node_ip_address()):
            shared_stores(spec.stores, self.name)
        cpus = resources.cpus or 1
        self._check_fits(ray.nodes(), cpus, resources.gpus)
        task = ray.remote(run_worker).options(
            num_cpus=cpus, num_gpus=resources.gpus, max_retries=RETRIES, retry_exceptions=True
        )
        argv = spec.argv(cpus, resources.gpu_fraction())
        self.refs = [task.remote(argv) for _ in range(n)]
        where = self.address or "a Ray started on this machine"
        console.print(f"workers: {n} Ray tasks on {where} ({cpus} CPU, {resources.gpus:g} GPU each)")

    def _check_fits(self, nodes: list[dict], cpus: int, gpus: float) -> None:
        """Refuse a worker no node can hold (Ray would queue its task forever, saying nothing)."""
        alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
        for what, asked in (("CPU", cpus), ("GPU", gpus)):
            most = max((node.get(what, 0) for node in alive), default=0)
            if asked > most:
                self._shutdown()
                raise AblateError(
                    f"each worker asks for {asked:g} {what}; the largest node of the Ray cluster has {most:g}"
                )

    def wait(self) -> list[str]:
        import ray

        problems, pending = [], list(self.refs)
        with sigterm_deferred() as stop:  # raised inside Ray's wait, Terminated would come out as Ctrl-C
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in done:
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        problems.append(f"a Ray task's worker failed {RETRIES + 1} times ({e.cause})")
                if stop.requested:
                    raise Terminated
        self._shutdown()
        return problems

    def cancel(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        for ref in self.refs:  # Ray ends each task's process and its worker with it (SIGKILL): the
            ray.cancel(ref, force=True)  # launcher hands their claims back (schedule.hand_back)
        self._shutdown()

    def _shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()  # a Ray started here stops with it; a cluster's keeps running


def one_host(nodes: list[dict], here: str) -> bool:
    """Whether every live node of the cluster is this machine (`here`: its address as Ray sees it)."""
    return all(node["NodeManagerAddress"] in (here, "127.0.0.1") for node in nodes if node.get("Alive", True))

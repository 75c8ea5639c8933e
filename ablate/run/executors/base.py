"""What every executor is and gets: the Executor contract, a worker's Resources, the engines'
Options, and the stores that workers on other hosts need."""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ablate.core.errors import AblateError
from ablate.run.workers import Stores, WorkerSpec


@dataclass(frozen=True)
class Resources:
    """What each worker gets: CPU cores (None: this machine's split between the workers) and
    GPUs, fractional where several workers share one (0.25: four to a GPU)."""

    cpus: int | None = None
    gpus: float = 0.0

    def gpu_fraction(self) -> float | None:
        """The share of its GPU's memory a worker may take: its share of the GPU, when it shares one."""
        return self.gpus if 0 < self.gpus < 1 else None


@dataclass
class Options:
    """An engine's own settings, as the command line gives them."""

    ray_address: str | None = None
    partition: str | None = None
    time_min: int | None = None
    gpus_per_node: int | None = None
    slurm_extra: dict[str, str] = field(default_factory=dict)
    pack: int = 1
    detach: bool = False


class Executor(ABC):
    """Launches n workers with their resources, waits for them, cancels them when stopped."""

    name = ""
    multi_host = False  # its workers may run on other hosts, which must reach the stores
    detached = False  # launched and left to run: `ablate status` follows it

    @abstractmethod
    def launch(self, spec: WorkerSpec, n: int, resources: Resources, console) -> None: ...

    @abstractmethod
    def wait(self) -> list[str]:
        """Until every worker has ended: what went wrong with any (one line each), for the work
        list to judge (its units may have been finished by others)."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop the workers: each hands its claim back (SIGINT or SIGTERM), for a rerun."""

    def check_stores(self, stores: Stores) -> None:
        """A multi-host executor refuses stores that only this host can reach."""
        if self.multi_host:
            shared_stores(stores, self.name)

    def run(self, spec: WorkerSpec, n: int, resources: Resources, console) -> list[str]:
        """Launch and wait (or, detached, only launch); what went wrong with the workers. The
        stores are checked (`check_stores`) before the study writes anything, not here."""
        self.launch(spec, n, resources, console)
        if self.detached:
            return []
        try:
            return self.wait()
        except BaseException:
            self.cancel()
            raise


def shared_stores(stores: Stores, engine: str) -> None:
    """Workers on other hosts need a ledger and a tracking store they can reach."""
    if stores.storage.startswith("sqlite"):
        raise AblateError(
            f"--executor {engine} runs workers on other hosts, which cannot share the SQLite work list "
            f"{stores.storage}: give --storage postgresql+psycopg://... (a PostgreSQL database)"
        )
    if not stores.uri.startswith(("http://", "https://", "postgresql")):
        raise AblateError(
            f"--executor {engine} runs workers on other hosts, which cannot reach the local MLflow store "
            f"{stores.uri}: give --tracking-uri http://HOST:PORT (an MLflow server: docs/scale-out.md) "
            "or a PostgreSQL URI"
        )

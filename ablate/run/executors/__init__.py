"""Where a study's workers run. An executor only starts `ablate worker` processes (on this
machine, as Ray tasks, as a SLURM job array) and waits for them; each worker claims its units
from the study's work list, so a retried, requeued or repeated launch trains nothing twice.
One implementation per engine: `local`, `ray`, `slurm`."""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ablate.errors import AblateError
from ablate.run.workers import Stores, WorkerSpec

NAMES = ("local", "ray", "slurm")


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


def devices_per_worker(devices: int, args, resources: Resources) -> Resources:
    """What a worker whose trials train on `devices` ranks gets: locally, one GPU per rank where
    there are GPUs (by default), or as many cores as ranks; on Ray, one task holding a core (and,
    with --gpus-per-worker, a GPU) per rank on one node, its ranks started by torchrun; on SLURM, a
    task per rank. Refused in one line where the executor or the machine cannot give them."""
    asked = f"train.devices {devices}"
    if 0 < resources.gpus < 1:
        raise AblateError(f"{asked} takes a GPU per process; --gpus-per-worker {resources.gpus:g} packs workers on one")
    if resources.gpus and resources.gpus < devices:
        raise AblateError(f"{asked} needs a GPU per process; --gpus-per-worker {resources.gpus:g} gives fewer")
    if args.executor == "ray":
        return Resources(max(resources.cpus or 1, devices), resources.gpus)
    if args.executor == "slurm":
        if args.pack > 1:
            raise AblateError(
                f"{asked} with --pack {args.pack}: a job holds one worker's {devices} ranks, not several workers"
            )
        return resources
    import os

    import torch

    from ablate.run.executors.local import gpu_slots

    if gpus := torch.cuda.device_count():
        resources = Resources(resources.cpus, resources.gpus or devices)
        gpu_slots(args.workers, resources.gpus, gpus)  # refuses more than this machine has
    elif devices * args.workers > (os.cpu_count() or 1):
        processes = devices * args.workers
        raise AblateError(
            f"{asked} × {args.workers} workers: {processes} processes, this machine has {os.cpu_count()} cores"
        )
    return resources


def executor(name: str, options: Options) -> Executor:
    if name == "local":
        from ablate.run.executors.local import Local

        return Local()
    if name == "ray":
        from ablate.run.executors.on_ray import OnRay

        return OnRay(options.ray_address)
    if name == "slurm":
        from ablate.run.executors.on_slurm import OnSlurm

        return OnSlurm(options)
    raise AblateError(f"unknown executor {name!r}: one of {', '.join(NAMES)}")

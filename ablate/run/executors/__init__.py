"""Where a study's workers run. An executor only starts `ablate worker` processes (on this
machine, as Ray tasks, as a SLURM job array) and waits for them; each worker claims its units
from the study's work list, so a retried, requeued or repeated launch trains nothing twice.
One implementation per engine: `local`, `ray`, `slurm`, each an `Executor` (base.py)."""

from ablate.core.errors import AblateError
from ablate.run.executors.base import Executor, Options, Resources

NAMES = ("local", "ray", "slurm")


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

"""Workers as processes of this machine: the default, with nothing to set up."""

import math
import os
import subprocess

from ablate.core.errors import AblateError
from ablate.core.processes import watched_by_me
from ablate.run.executors.base import Executor, Resources
from ablate.run.workers import WorkerSpec


def gpu_slots(n: int, gpus: float, available: int) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES: with a fractional share, 1/share workers packed on each
    GPU in turn; with whole GPUs, each worker its own; None without GPUs."""
    if gpus <= 0:
        return [None] * n
    if gpus < 1:
        per_gpu = math.floor(1 / gpus + 1e-9)
        slots = [str(i // per_gpu) for i in range(n)]
    else:
        whole = math.ceil(gpus)
        slots = [",".join(str(i * whole + g) for g in range(whole)) for i in range(n)]
    needed = 1 + max(int(g) for slot in slots for g in slot.split(","))
    if needed > available:
        raise AblateError(f"{n} workers with {gpus:g} GPU each need {needed} GPUs; this machine has {available}")
    return slots


class Local(Executor):
    name = "local"

    def launch(self, spec: WorkerSpec, n: int, resources: Resources, console) -> None:
        """Each worker in its own session (Ctrl-C reaches it once, forwarded from here), the
        cores split between them unless given, its GPU share set by CUDA_VISIBLE_DEVICES."""
        available = 0
        if resources.gpus > 0:
            import torch

            available = torch.cuda.device_count()
        slots = gpu_slots(n, resources.gpus, available)
        threads = resources.cpus or max(1, (os.cpu_count() or 1) // n)
        argv = spec.argv(threads, resources.gpu_fraction())
        self.procs = [subprocess.Popen(argv, start_new_session=True, env=_env(slot)) for slot in slots]
        console.print(f"workers: started {n} (pids {', '.join(str(p.pid) for p in self.procs)})")

    def wait(self) -> list[str]:
        return [f"worker {p.pid} exited with code {code}" for p in self.procs if (code := p.wait()) != 0]

    def cancel(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(2)  # SIGINT: each marks its run KILLED and lets go of its claim
        for p in self.procs:
            p.wait()


def _env(cuda_devices: str | None) -> dict[str, str]:
    env = watched_by_me()
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    return env

"""Workers as a SLURM job array, submitted through submitit (`pip install "ablate[slurm]"`).

Each array job runs `pack` workers (sharing the job's GPU when --pack packs several on one).
SLURM's signal before a time limit or a preemption (USR2, `signal_delay_s` ahead) reaches
submitit, which calls `Workers.checkpoint`: each worker is sent SIGTERM, finishes its step, saves
a checkpoint and hands its unit back; the job is requeued, and its workers resume the units from
their checkpoints. At the limit itself SLURM sends the workers SIGTERM, with the same effect.
"""

import logging
import signal
import subprocess
import time

from ablate.core.errors import AblateError, first_line
from ablate.core.processes import watched_by_me
from ablate.run.executors.base import Executor, Options, Resources
from ablate.run.workers import WorkerSpec

SIGNAL_DELAY_S = 30  # USR2 this long before the time limit: time to finish a step and save
POLL_S = 0.5
# why SLURM keeps a job pending when no wait will start it: the job asks for more than the partition allows
NEVER_STARTS = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidQOS"}
MAX_REQUEUES = 100  # a study longer than many time limits requeues as often as it needs


class Workers:
    """One array job: `pack` `ablate worker` processes; checkpointable, so that submitit requeues it.
    With `ranks`, each of the job's tasks is one rank of a worker whose trials train on all of
    them, torch.distributed set up from SLURM's environment."""

    def __init__(self, argv: list[str], pack: int, ranks: bool = False):
        self.argv, self.pack, self.ranks, self.procs = argv, pack, ranks, []

    def __call__(self) -> None:
        if self.ranks:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        self.procs = [subprocess.Popen(self.argv, env=watched_by_me()) for _ in range(self.pack)]
        while any(p.poll() is None for p in self.procs):  # not p.wait(): it would hold the lock that
            time.sleep(POLL_S)  # `checkpoint`, run from the signal handler meanwhile, waits on
        codes = [p.returncode for p in self.procs]
        if bad := [c for c in codes if c != 0]:
            raise RuntimeError(f"{len(bad)} of {self.pack} workers exited with an error (codes {bad})")

    def checkpoint(self, *args, **kwargs):
        """Timeout or preemption: stop the workers (each saves and lets go), then requeue this job."""
        import submitit

        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait()
        return submitit.helpers.DelayedSubmission(Workers(self.argv, self.pack, self.ranks))

    def __getstate__(self):
        return {"argv": self.argv, "pack": self.pack, "ranks": self.ranks, "procs": []}


class OnSlurm(Executor):
    name = "slurm"
    multi_host = True

    def __init__(self, options: Options):
        self.options, self.jobs = options, []

    @property
    def detached(self) -> bool:
        return self.options.detach

    def launch(self, spec: WorkerSpec, n: int, resources: Resources, console) -> None:
        try:
            import submitit
        except ImportError:
            raise AblateError('--executor slurm needs submitit: pip install "ablate[slurm]"') from None
        logging.getLogger("submitit").setLevel(logging.ERROR)  # not a warning per poll where sacct is off
        o = self.options
        folder = spec.stores.results.resolve() / "slurm" / spec.study.stem
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
        if o.pack > 1 and resources.gpus and resources.gpus * o.pack > (o.gpus_per_node or 1):
            raise AblateError(f"--pack {o.pack} workers with {resources.gpus:g} GPU each do not fit one job's GPUs")
        cpus = resources.cpus or 1
        params = {
            "job_name": f"ablate-{spec.study.stem}",
            "cpus_per_task": cpus * o.pack,
            "array_parallelism": n,
            "signal_delay_s": SIGNAL_DELAY_S,
            "additional_parameters": dict(o.slurm_extra),
        }
        if spec.devices > 1:  # a job per worker, a task per rank, on one node
            params["ntasks_per_node"] = spec.devices
        if o.partition:
            params["partition"] = o.partition
        if o.time_min:
            params["time"] = o.time_min
        gpus = o.gpus_per_node or (max(1, round(resources.gpus * o.pack)) if resources.gpus else 0)
        if gpus:
            params["gpus_per_node"] = gpus
        try:
            executor.update_parameters(**params)
        except ValueError as e:  # an --slurm-extra key sbatch does not have
            raise AblateError(f"slurm: {e}") from None
        fraction = 1 / o.pack if o.pack > 1 else resources.gpu_fraction()
        argv = spec.argv(cpus, fraction, torchrun=False)
        try:
            with executor.batch():
                self.jobs = [executor.submit(Workers(argv, o.pack, spec.devices > 1)) for _ in range(n)]
        except submitit.core.utils.FailedJobError as e:  # sbatch's own words: a partition, an option, a size
            said = first_line(e).removeprefix("sbatch: ").removeprefix("error: ")
            raise AblateError(f"SLURM refused the jobs: {said}") from None
        self._refuse_never_startable()
        ids = ", ".join(job.job_id for job in self.jobs)
        console.print(f"workers: submitted {n} SLURM jobs of {o.pack} worker(s) each ({ids}); logs in {folder}")

    def _refuse_never_startable(self, wait_s: float = 15.0) -> None:
        """Cancel the jobs, in one line, when SLURM keeps them pending for a reason that never
        passes (more CPUs than any node of the partition has): sbatch accepts such jobs, and they
        would wait forever, saying nothing."""
        ids = ",".join(sorted({job.job_id.partition("_")[0] for job in self.jobs}))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["squeue", "-h", "-j", ids, "-o", "%T %r"], check=False, capture_output=True, text=True
            )
            reasons = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("PENDING ")}
            if never := reasons & NEVER_STARTS:
                self.cancel()
                raise AblateError(
                    f"SLURM will never start these jobs as asked (pending: {', '.join(sorted(never))}): "
                    "ask for no more CPUs, GPUs, memory or time than one node of the partition has"
                )
            if "None" not in reasons:  # started, or waiting for something that passes (Resources, Priority)
                return
            time.sleep(POLL_S)

    def wait(self) -> list[str]:
        """Each job's end; a cancelled (`scancel`) or failed one is reported with its log."""
        problems = []
        for job in self.jobs:
            try:
                job.result()
            except Exception:  # noqa: BLE001 - submitit re-raises the job's end; its log says why
                problems.append(f"SLURM job {job.job_id} did not complete (its log: {job.paths.stderr})")
        return problems

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel(check=False)  # scancel: SIGTERM to the workers, which hand their units back

"""torchrun, watched: the command a worker runs as when its trials train on several processes.
Started by a launcher with `watched_by_me`, it stops when the launcher dies (and passes the
SIGTERM on to its ranks), and each rank stops when it dies.

    python -m ablate.run.ranks --standalone --nproc-per-node N -m ablate.cli worker ...
"""

import os
import runpy
import sys

from ablate.core.processes import stop_with_parent, watched_by_me

if __name__ == "__main__":
    stop_with_parent()
    os.environ.update(watched_by_me())  # the ranks watch this process
    sys.argv[0] = "torchrun"
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)

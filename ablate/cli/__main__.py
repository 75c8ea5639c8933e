"""`python -m ablate.cli`: the `ablate` command, for a worker started by path to this Python."""

import sys

from ablate.cli import main

sys.exit(main())

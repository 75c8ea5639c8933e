"""The typed study configs: validating a study, and the CLI's help, need no torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NO_TORCH = """
import sys, yaml
from ablate.config import StudyConfig
from ablate.cli import main
for path in sys.argv[1:]:
    StudyConfig(**yaml.safe_load(open(path)))
for argv in (["--help"], ["plan", "--help"], ["run", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
assert "torch" not in sys.modules, "torch was imported"
"""


def test_validating_every_shipped_study_and_the_help_import_no_torch():
    studies = sorted(str(p) for p in (ROOT / "studies").glob("*.yaml"))
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *studies], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: ablate" in done.stdout

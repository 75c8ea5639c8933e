"""The manual holds together: the README is a README, the docs site builds with no broken link
or page left out of its navigation, every `ablate` command the README and the docs show parses
with the real command line, and the parts drawn from the code (tests/pages.py) are current."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ablate.cli import parser
from ablate.mixers import registry
from ablate.mixers.registry import Mixer, Size, register
from tests import pages

PAGES = [Path("README.md"), *sorted(Path("docs").glob("*.md"))]


def test_the_readme_is_a_readme():
    assert len(Path("README.md").read_text().splitlines()) <= 250


def test_the_docs_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        check=False,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists()


def commands() -> list[tuple[str, str]]:
    """(page, command line) of every `ablate ...` line in a shell block of the README and the docs."""
    found = []
    for page in PAGES:
        text = page.read_text()
        exported = dict(re.findall(r"^export (\w+)=(\S+)", text, re.MULTILINE))  # what the shell would expand
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.DOTALL):
            block = re.sub(r"\$(\w+)", lambda m, known=exported: known.get(m[1], m[0]), block)
            for line in block.replace("\\\n", " ").splitlines():  # continued lines joined
                if line.startswith("ablate "):
                    found.append((str(page), line))
                elif " && ablate " in line:
                    found.append((str(page), "ablate " + line.split(" && ablate ", 1)[1]))
    return found


def test_the_docs_show_commands():
    pages = {page for page, _ in commands()}
    assert {"README.md", "docs/commands.md", "docs/index.md"} <= pages


@pytest.mark.parametrize(("page", "line"), commands())
def test_every_command_shown_parses(page, line):
    argv = shlex.split(line, comments=True)[1:]
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        if argv == ["--version"] and e.code == 0:
            return
        raise AssertionError(f"{page}: `{line}` does not parse") from None
    assert callable(args.func)


def test_the_pages_drawn_from_the_code_are_current():
    assert pages.stale() == [], "a page drawn from the code is stale: run `python -m tests.pages`"


class _New(Mixer):
    """A mixer added without redrawing the docs."""

    __module__ = "ablate.architectures.new"  # as if a file of architectures/ held it

    def __init__(self, cfg, layer_idx, *, width: Size = 3):
        super().__init__()
        self.out = torch.nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x):
        return self.out(x)


def test_a_mixer_added_without_redrawing_leaves_the_mixers_tables_stale(monkeypatch):
    registry.variants()  # every family loaded before the registry is copied
    monkeypatch.setattr(registry, "_MIXERS", dict(registry._MIXERS))
    register("test-new")(_New)
    assert pages.stale() == ["docs/mixers.md: mixers", "README.md: mixer list"]
    assert "| `test-new` | A mixer added without redrawing the docs. | `width` (3) |" in pages.mixers()
    assert "| `test-new` | A mixer added without redrawing the docs. |" in pages.mixer_list()
    assert sorted(measured_rows()) != sorted(pages._shipped())


def measured_rows() -> list[str]:
    """The mixers docs/mixers.md's table of measured figures has a row for, in its order."""
    text = Path("docs/mixers.md").read_text().split("## What they measured")[1].split("\n## ")[0]
    return [line.split("`")[1] for line in text.splitlines() if line.startswith("| `")]


def test_every_mixer_has_a_row_of_measured_figures_or_says_it_was_not_measured():
    assert sorted(measured_rows()) == sorted(pages._shipped())

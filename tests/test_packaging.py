"""The install holds the whole framework and the variants beside it: every package of ablate/
and architectures/ (as ablate.architectures) is listed in pyproject.toml."""

import re
from pathlib import Path


def test_every_package_is_installed():
    listed = re.search(r"^packages = \[(.*?)\]", Path("pyproject.toml").read_text(), re.MULTILINE | re.DOTALL).group(1)
    listed = set(re.findall(r'"([\w.]+)"', listed))
    found = {".".join(p.parent.parts) for p in Path("ablate").rglob("__init__.py")}
    assert listed == found | {"ablate.architectures"}

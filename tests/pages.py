"""The parts of the docs drawn from the code, so that they cannot drift from it: the layers (from
tests/test_layers.py), the code map (from each module's docstring), the mixers (from the
registry: each one's docstring, options, defaults and state, in the docs and, shorter, in the
README) and the command reference (from the argument parser). Each sits on its page between two
markers; `python -m tests.pages` redraws them all, and tests/test_docs.py fails while one is stale."""

import inspect
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the shape a mixer's state is sized at in the mixers table
STATE_SHAPE = {"vocab_size": 64, "context": 1024, "d_model": 256, "n_layers": 1, "n_heads": 4, "qkv_dim": 256}


def begin(name: str) -> str:
    return f"<!-- drawn from the code: {name} (python -m tests.pages) -->"


def end(name: str) -> str:
    return f"<!-- end of {name} -->"


def layers() -> str:
    from tests.test_layers import picture

    return picture()


def first_sentence(docstring: str) -> str:
    """A docstring's first sentence, on one line ("et al." ends none)."""
    import re

    paragraph = " ".join(docstring.split("\n\n")[0].split())
    return re.split(r"(?<!\bal)\.(?:\s+(?=[A-Z`(])|$)", paragraph, maxsplit=1)[0].rstrip(".:") + "."


def _first_sentence(path: Path) -> str:
    """The first sentence of a module's docstring."""
    import ast

    return first_sentence(ast.get_docstring(ast.parse(path.read_text())))


def _package_map(package: str, known: dict[str, Path], depth: int) -> list[str]:
    """The package's line, then its modules', then its subpackages', each indented under it."""
    path = known[package].relative_to(ROOT)
    lines = [f"{'    ' * depth}- `{path.parent}/`: {_first_sentence(known[package])}"]
    inside = sorted(n for n in known if n.rpartition(".")[0] == package)
    for name in inside:
        if known[name].name != "__init__.py":
            lines.append(f"{'    ' * (depth + 1)}- `{known[name].name}`: {_first_sentence(known[name])}")
    for name in inside:
        if known[name].name == "__init__.py":
            lines += _package_map(name, known, depth + 1)
    return lines


def code_map() -> str:
    """Every package and module, in the order of the layers (bottom first), each with the first
    sentence of its docstring."""
    from tests.test_layers import LAYERS, modules

    known = modules()
    lines = []
    for _, units in LAYERS:
        for unit in units:
            if known[unit].name == "__init__.py" and unit != "ablate":
                lines += _package_map(unit, known, 0)
            else:
                lines.append(f"- `{known[unit].relative_to(ROOT)}`: {_first_sentence(known[unit])}")
    return "\n".join(lines)


def _shown(value) -> str:
    """An option's value as a study writes it in YAML."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...")


def _option(parameter: inspect.Parameter) -> str:
    from ablate.mixers.registry import _literals

    choices = [c for c in _literals(parameter.annotation) if c is not None]
    listed = f"; one of {', '.join(map(str, choices))}" if choices else ""
    return f"`{parameter.name}` ({_shown(parameter.default)}{listed})"


def mixers() -> str:
    """Every mixer of architectures/: what it is (its docstring), its options with their defaults, and
    the numbers of its state per sequence at STATE_SHAPE."""
    import ablate
    from ablate.mixers import registry

    rows = ["| mixer | what | options (default) | state per sequence and layer |", "| --- | --- | --- | --- |"]
    for name in _shipped():
        cls = registry.mixer_class(name)
        what = " ".join(" ".join(inspect.getdoc(cls).split("\n\n")).split()).replace("|", "\\|")
        parameters = inspect.signature(cls.__init__).parameters.values()
        options = ", ".join(_option(p) for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY) or "none"
        mixer = ablate.build_model({**STATE_SHAPE, "mixer": name}, device="meta").blocks[0].mixer
        size = mixer.state_size()
        state = "grows with the sequence" if size is None else f"{size:,}"
        if mixer.cannot_decode:
            state = f"does not decode: {mixer.cannot_decode}"
        rows.append(f"| `{name}` | {what} | {options} | {state} |")
    shape = ", ".join(f"{k} {v}" for k, v in STATE_SHAPE.items() if k in ("d_model", "n_heads", "context"))
    return "\n".join(rows) + f"\n\nState sizes at {shape}."


def _shipped() -> list[str]:
    """The mixers of architectures/, in the registry's order (a test may register its own)."""
    from ablate.mixers import registry

    return [n for n in registry.variants() if registry.mixer_class(n).__module__.startswith("ablate.architectures.")]


def mixer_list() -> str:
    """The README's table: each mixer with its docstring's first sentence."""
    from ablate.mixers import registry

    rows = ["| mixer | what it is |", "| --- | --- |"]
    for name in _shipped():
        what = first_sentence(inspect.getdoc(registry.mixer_class(name))).replace("|", "\\|")
        rows.append(f"| `{name}` | {what} |")
    return "\n".join(rows)


def commands() -> str:
    """Every command's --help, as argparse prints it at 100 columns."""
    import argparse
    import os

    from ablate.cli import parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
    try:
        top = parser()
        (sub,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
        parts = ["```text", top.format_help().rstrip(), "```"]
        for name, command in sub.choices.items():
            parts += [f"\n## ablate {name}\n", "```text", command.format_help().rstrip(), "```"]
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(parts)


BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "layers": ("docs/architecture.md", layers),
    "code map": ("docs/architecture.md", code_map),
    "mixers": ("docs/mixers.md", mixers),
    "mixer list": ("README.md", mixer_list),
    "commands": ("docs/cli.md", commands),
}


def drawn(text: str, name: str, content: str) -> str:
    """The page's text with the block `name` drawn anew."""
    head, rest = text.split(begin(name))
    _, tail = rest.split(end(name))
    return f"{head}{begin(name)}\n{content}\n{end(name)}{tail}"


def stale() -> list[str]:
    """The blocks whose page does not show what the code says now."""
    found = []
    for name, (page, draw) in BLOCKS.items():
        text = (ROOT / page).read_text()
        if drawn(text, name, draw()) != text:
            found.append(f"{page}: {name}")
    return found


def main() -> None:
    for name, (page, draw) in BLOCKS.items():
        path = ROOT / page
        path.write_text(drawn(path.read_text(), name, draw()))


if __name__ == "__main__":
    main()

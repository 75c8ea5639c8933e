"""The layers of the package, as a contract the imports keep: a module imports from its own layer
or the layers below it, never above, lazy imports inside functions included; no two packages
import each other, but for the registry and the variants that plug into it; and no modules import
one another round a circle.

docs/architecture.md draws these layers (`picture`, through tests/pages.py)."""

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# bottom first: (what the layer is, its modules and packages)
LAYERS = [
    ("core: errors, processes, the study schema and the names runs are tracked by (no torch)", ["ablate.core"]),
    ("layers, ops and devices", ["ablate.nn"]),
    ("the mixer contract and registry, and the variants registered in it", ["ablate.mixers", "ablate.architectures"]),
    ("the backbone", ["ablate.model"]),
    ("data: sources, tokenizers, corpora, synthetic tasks", ["ablate.data"]),
    (
        "what is done with one model: train it, import it, run it (audit, sample, decode, score), export it",
        ["ablate.train", "ablate.importers", "ablate.inference", "ablate.hf"],
    ),
    ("planning: a study's YAML to typed trials, budgets, FLOPs", ["ablate.plan"]),
    ("benchmarks of planned trials", ["ablate.bench"]),
    ("tracking: the MLflow store, a run's records, the UI's views", ["ablate.tracking"]),
    ("running and reading studies, importing and evaluating runs", ["ablate.run", "ablate.compare"]),
    ("the interface: the command line, the UIs' servers, the package's API", ["ablate.cli", "ablate"]),
]
# a pair of packages allowed to import each other: the registry loads the variants, which register in it
PLUGINS = {frozenset({"ablate.mixers", "ablate.architectures"})}


def modules() -> dict[str, Path]:
    """Every module of the package, by its dotted name (architectures/ is installed as ablate.architectures)."""
    found = {}
    for path in [*ROOT.joinpath("ablate").rglob("*.py"), *ROOT.joinpath("architectures").rglob("*.py")]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[0] == "architectures":
            parts.insert(0, "ablate")
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) of each of the package's modules the file imports, wherever in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]  # a module's name, or a name in a module
        else:
            continue
        for name in names:
            while name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in known:
                found.append((node.lineno, name))
    return found


def layer(module: str) -> int:
    """The index of the layer that holds the module: the longest of the layers' names it is under."""
    matches = [(len(name), i) for i, (_, names) in enumerate(LAYERS) for name in names if _under(module, name)]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return max(matches)[1]


def _under(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


def package(module: str) -> str:
    """The package-level unit a module belongs to: ablate.X."""
    return ".".join(module.split(".")[:2])


def upward(known: dict[str, Path]) -> list[str]:
    """Each import of a module from a layer above the importer's, as 'file:line: a imports b'."""
    return [
        f"{path}:{line}: {module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, path in sorted(known.items())
        for line, target in imports(path, known)
        if layer(target) > layer(module)
    ]


def mutual(known: dict[str, Path]) -> list[str]:
    """Pairs of packages (ablate.X) that import each other, but for the declared plugins."""
    edges = {
        (package(module), package(target))
        for module, path in known.items()
        for _, target in imports(path, known)
        if package(module) != package(target) and "." in module and "." in target
    }
    return sorted(f"{a} ⇄ {b}" for a, b in edges if (b, a) in edges and a < b and frozenset({a, b}) not in PLUGINS)


def cycles(known: dict[str, Path]) -> list[list[str]]:
    """Each set of modules that import one another round a circle (a module's package __init__
    included), found as the graph's strongly connected components."""
    edges = {module: {t for _, t in imports(path, known) if t != module} for module, path in known.items()}
    order, low, stack, found = {}, {}, [], []

    def visit(v: str) -> None:  # Tarjan's algorithm
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in edges[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in order:
            visit(module)
    return found


def picture() -> str:
    """The layers, top first, as docs/architecture.md draws them."""
    rows = [
        f"{i:>2}  {what}\n" + textwrap.fill(" · ".join(names), 96, initial_indent=" " * 4, subsequent_indent=" " * 4)
        for i, (what, names) in reversed(list(enumerate(LAYERS)))
    ]
    return "```\n" + "\n".join(rows) + "\n```"


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward(modules()) == []


def test_no_two_packages_import_each_other():
    assert mutual(modules()) == []


def test_no_modules_import_each_other_round_a_circle():
    assert cycles(modules()) == []


def test_a_circle_is_caught(tmp_path):
    known = modules()
    planted = tmp_path / "claims.py"
    planted.write_text(known["ablate.run.claims"].read_text() + "\n\ndef later():\n    from ablate.run import trial\n")
    known["ablate.run.claims"] = planted  # trial imports claims
    (circle,) = cycles(known)
    assert {"ablate.run.claims", "ablate.run.trial"} <= set(circle)


def test_every_module_is_in_a_layer():
    for module in modules():
        layer(module)


def test_an_upward_import_is_caught(tmp_path):
    """The contract fails where it should: the trainer importing the run layer's trial code."""
    known = modules()
    planted = tmp_path / "trainer.py"
    planted.write_text(
        known["ablate.train.trainer"].read_text() + "\n\ndef later():\n    from ablate.run import trial\n"
    )
    known["ablate.train.trainer"] = planted
    (caught,) = [line for line in upward(known) if "ablate.run.trial" in line]
    assert "ablate.train.trainer (layer 5) imports ablate.run.trial (layer 9)" in caught


def test_a_mutual_import_is_caught(tmp_path):
    known = modules()
    planted = tmp_path / "loss.py"
    planted.write_text(known["ablate.nn.loss"].read_text() + "\n\nfrom ablate.data import sources\n")
    known["ablate.nn.loss"] = planted  # nn importing data, which imports nn
    assert "ablate.data ⇄ ablate.nn" in mutual(known)

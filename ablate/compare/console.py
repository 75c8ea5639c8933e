"""A comparison drawn in the terminal: rich tables of the contrasts, of every variant against
the baseline, and of the expectations, with the facts a reader needs beside them."""

from rich.console import Console
from rich.table import Table

from ablate.compare import Comparison, cells, scaling
from ablate.compare.stats import POWER

HELD = {"yes": "[green]yes[/green]", "NO": "[red]NO[/red]"}


def print_comparison(c: Comparison, console: Console, wide: bool = False) -> None:
    """The contrasts, the table against the baseline and the expectations, then the facts beside
    them; the decisive columns only, unless `wide`."""
    better = "lower" if c.lower else "higher"
    contrasts, variants = (cells.contrasts, cells.variants) if wide else (cells.brief_contrasts, cells.brief_variants)
    if len(c.contrasts):
        console.print(_table(f"{c.study}: contrasts, {c.metric} ({better} is better)", contrasts(c), wide))
    console.print(_table(f"{c.study}: {c.metric} ({better} is better), against {c.baseline}", variants(c), wide))
    if not wide:
        print(f"marks: {cells.MARKS}; every column: ablate compare --wide")
    if len(c.checks):
        columns, rows = cells.expectations(c)
        console.print(_table(f"{c.study}: expectations", (columns, [[*r[:-1], HELD[r[-1]]] for r in rows])))
    for fact in c.facts:  # plain lines, as a user copies them
        print(fact)
    print(
        f"verdicts at α=0.05 after Holm's correction within each table; paired by seed where both variants have "
        "the seed, else Welch's t-test; effect: d_z (paired) or Hedges' g; MDE: the difference the test would "
        f"detect with {POWER:.0%} power at Holm's strictest level"
    )
    if c.scaling is not None:
        print("a scaling study: `ablate compare --scaling` prints the laws fitted across its sizes")


def print_scaling(c: Comparison, console: Console) -> None:
    """A scaling study's fitted laws, the crossings of its pairs and any predictions asked for."""
    s = c.scaling
    console.print(_table(f"{c.study}: {s.metric} = E + A·x^(−α), fitted per variant", cells.laws(s)))
    for note in scaling.convergence_notes(s) + scaling.bound_notes(s):
        print(note)
    if len(s.crossings):
        console.print(_table(f"{c.study}: where the fitted laws cross", cells.crossings(s)))
    if len(s.predictions):
        console.print(_table(f"{c.study}: {s.metric} predicted by the laws", cells.predictions(s)))
    print(
        f"least squares over every seed at every size; 95% intervals over {s.bootstrap} bootstrap replicates "
        "(seeds resampled within each size, the same draw for every variant); crossings searched up to "
        f"{scaling.EXTEND}× the largest measured size, EXTRAPOLATED where beyond it"
    )


def _table(title: str, table: cells.Table, edge: bool = True) -> Table:
    columns, rows = table
    out = Table(title=title, show_edge=edge)
    for col in columns:
        out.add_column(col, justify="left" if col in cells.LEFT else "right", no_wrap=not edge)
    for row in rows:
        out.add_row(*row)
    return out

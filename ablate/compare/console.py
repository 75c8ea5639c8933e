"""A comparison drawn in the terminal: rich tables of the contrasts, of every variant against
the baseline, and of the expectations, with the facts a reader needs beside them."""

import math

from rich.console import Console
from rich.table import Table

from ablate.compare import Comparison
from ablate.compare.stats import POWER
from ablate.compare.tables import budgeted


def print_comparison(c: Comparison, console: Console) -> None:
    """The contrasts, the table against the baseline and the expectations, then the facts beside them."""
    better = "lower" if c.lower else "higher"
    if len(c.contrasts):
        console.print(_contrasts(c, f"{c.study}: contrasts, {c.metric} ({better} is better)"))
    console.print(_against_baseline(c, f"{c.study}: {c.metric} ({better} is better), against {c.baseline}"))
    if len(c.checks):
        console.print(_expectations(c))
    for fact in c.facts:  # plain lines, as a user copies them
        print(fact)
    print(
        f"verdicts at α=0.05 after Holm's correction within each table; paired by seed where both variants have "
        "the seed, else Welch's t-test; effect: d_z (paired) or Hedges' g; MDE: the difference the test would "
        f"detect with {POWER:.0%} power at Holm's strictest level"
    )


def _contrasts(c: Comparison, title: str) -> Table:
    out = Table(title=title)
    for col in ("contrast", "n", "Δ [95% CI]", "MDE", "test", "p (Holm)", "effect", "verdict"):
        out.add_column(col, justify="left" if col in ("contrast", "test", "verdict") else "right")
    for r in c.contrasts.itertuples(index=False):
        out.add_row(f"{r.variant} vs {r.against}", str(r.n), *_comparison_cells(r), _marked(r.verdict, c.table, r))
    return out


def _against_baseline(c: Comparison, title: str) -> Table:
    """Every variant: its runs described, its shape (the budgeted quantity marked), its test against the baseline."""
    out = Table(title=title)
    kind, held = budgeted(c.budget), " (budget)" if c.budget else ""
    params = "params total" if kind == "n_params" else "params non-emb"
    params, flops = (params, "FLOPs/tok" + held) if kind == "flops_per_token" else (params + held, "FLOPs/tok")
    columns = ("variant", "n", "failed", "mean", "95% CI", "std", "median", params, "layers×d", flops)
    for col in (*columns, "Δ vs baseline [95% CI]"):
        out.add_column(col, justify="left" if col == "variant" else "right")
    for col in ("MDE", "test", "p (Holm)", "effect", "verdict", "causal"):
        out.add_column(col, justify="left" if col in ("test", "verdict") else "right")
    for r in c.table.itertuples(index=False):
        cells = ["-"] * 5 if r.variant == c.baseline or r.n == 0 else _comparison_cells(r)
        out.add_row(
            r.variant,
            str(r.n),
            str(r.failed),
            _cell(r.mean),
            f"[{_cell(r.ci95_low)}, {_cell(r.ci95_high)}]",
            _cell(r.std),
            _cell(r.median),
            _count(r.n_params if kind == "n_params" else r.n_params_non_embedding),
            "-" if math.isnan(r.n_layers) else f"{r.n_layers:.0f}×{r.d_model:.0f}",
            _count(r.flops_per_token),
            *cells,
            _marked(r.verdict, c.table, r),
            r.causal,
        )
    return out


def _expectations(c: Comparison) -> Table:
    out = Table(title=f"{c.study}: expectations")
    for col in ("expectation", "metric", "expected", "verdict", "p (Holm)", "held"):
        out.add_column(col, justify="right" if col == "p (Holm)" else "left")
    for r in c.checks.itertuples(index=False):
        held = "[green]yes[/green]" if r.held else "[red]NO[/red]"
        out.add_row(f"{r.variant} vs {r.against}", r.metric, r.expected, r.verdict, _cell(r.p_holm), held)
    return out


def _comparison_cells(r) -> list[str]:
    """Δ with its interval, MDE, test, Holm p and effect of one comparison row."""
    return [
        f"{r.diff:+.4f} [{_cell(r.diff_ci_low)}, {_cell(r.diff_ci_high)}]" if not math.isnan(r.diff) else "-",
        _cell(r.mde),
        r.test or "-",
        _cell(r.p_holm),
        "-" if math.isnan(r.effect) else f"{r.effect_kind} {r.effect:+.2f}",
    ]


def _marked(verdict: str, table, r) -> str:
    """The verdict, marked when a variant it concerns has not converged."""
    names = {r.variant, getattr(r, "against", None)}
    unconverged = [v for v in table.loc[table["converged"].eq(False), "variant"] if v in names]
    return verdict + (f" (not converged: {', '.join(unconverged)})" if unconverged else "")


def _count(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
    return f"{value:,}" if isinstance(value, int) else str(value)

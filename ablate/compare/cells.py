"""A comparison's tables as rows of formatted text, the same for the terminal and the report page:
thousands separators, four decimals (small p-values in scientific form), '-' where nothing is known."""

import math

from ablate.compare import Comparison, stats
from ablate.compare.scaling import AXES, Scaling
from ablate.compare.tables import budgeted

LEFT = {"contrast", "variant", "test", "verdict", "expectation", "metric", "expected", "held", "pair", "x", "where"}
LEFT |= {"lower at the far end"}  # text columns

Table = tuple[list[str], list[list[str]]]  # column names, rows of cells


def contrasts(c: Comparison) -> Table:
    columns = ["contrast", "n", "Δ [95% CI]", "MDE", "test", "p (Holm)", "effect", "verdict"]
    rows = [
        [f"{r.variant} vs {r.against}", str(r.n), *_comparison(r), _marked(r.verdict, c, r)]
        for r in c.contrasts.itertuples(index=False)
    ]
    return columns, rows


def variants(c: Comparison) -> Table:
    """Every variant: its runs described, its shape (the budgeted quantity marked), its test against the baseline."""
    kind, held = budgeted(c.budget), " (budget)" if c.budget else ""
    params = "params total" if kind == "n_params" else "params non-emb"
    params, flops = (params, "FLOPs/tok" + held) if kind == "flops_per_token" else (params + held, "FLOPs/tok")
    columns = ["variant", "n", "failed", "mean", "95% CI", "std", "median", params, "layers×d", flops]
    columns += ["Δ vs baseline [95% CI]", "MDE", "test", "p (Holm)", "effect", "verdict", "causal"]
    rows = []
    for r in c.table.itertuples(index=False):
        rows.append(
            [
                r.variant,
                str(r.n),
                str(r.failed),
                number(r.mean),
                f"[{number(r.ci95_low)}, {number(r.ci95_high)}]",
                number(r.std),
                number(r.median),
                count(r.n_params if kind == "n_params" else r.n_params_non_embedding),
                "-" if math.isnan(r.n_layers) else f"{r.n_layers:.0f}×{r.d_model:.0f}",
                count(r.flops_per_token),
                *(["-"] * 5 if r.variant == c.baseline or r.n == 0 else _comparison(r)),
                _marked(r.verdict, c, r),
                r.causal,
            ]
        )
    return columns, rows


# The decisive columns, for a terminal of 120 columns (`ablate compare --wide` prints every column):
# three decimals, and a mark after the verdict for what qualifies it.
NOT_CONVERGED, LEAKS, BORDERLINE = "*", "!", "~"
MARKS = (
    f"{NOT_CONVERGED} not converged, {LEAKS} leaks (not causal), "
    f"{BORDERLINE} borderline (p Holm within {stats.BORDERLINE:g}× of α: float differences between machines can flip it)"
)


def brief_contrasts(c: Comparison) -> Table:
    columns = ["contrast", "n", "Δ [95% CI]", "p (Holm)", "verdict"]
    rows = [
        [f"{r.variant} vs {r.against}", str(r.n), _brief_diff(r), number(r.p_holm), _mark(r.verdict, c, r)]
        for r in c.contrasts.itertuples(index=False)
    ]
    return columns, rows


def brief_variants(c: Comparison) -> Table:
    columns = ["variant", "n", "mean [95% CI]", "Δ [95% CI]", "p (Holm)", "verdict"]  # Δ: against the baseline
    rows = []
    for r in c.table.itertuples(index=False):
        mean = "-" if math.isnan(r.mean) else f"{r.mean:.3f} [{_3(r.ci95_low)}, {_3(r.ci95_high)}]"
        baseline = r.variant == c.baseline or r.n == 0
        diff, p = ("-", "-") if baseline else (_brief_diff(r), number(r.p_holm))
        rows.append([r.variant, str(r.n), mean, diff, p, _mark(r.verdict, c, r)])
    return columns, rows


def _brief_diff(r) -> str:
    return "-" if math.isnan(r.diff) else f"{r.diff:+.3f} [{_3(r.diff_ci_low, '+')}, {_3(r.diff_ci_high, '+')}]"


def _3(value: float, sign: str = "") -> str:
    return "-" if math.isnan(value) else f"{value:{sign}.3f}"


def _mark(verdict: str, c: Comparison, r) -> str:
    """The verdict with a mark for each variant it concerns that has not converged or leaks."""
    names = {r.variant, getattr(r, "against", None)}
    table = c.table[c.table["variant"].isin(names)]
    marks = NOT_CONVERGED * bool(table["converged"].eq(False).any()) + LEAKS * bool(table["causal"].eq("no").any())
    marks += BORDERLINE * bool(getattr(r, "borderline", False))
    return f"{verdict} {marks}" if marks else verdict


def expectations(c: Comparison) -> Table:
    columns = ["expectation", "metric", "expected", "verdict", "p (Holm)", "held"]
    rows = [
        [
            r.variant if r.against == "-" else f"{r.variant} vs {r.against}",
            r.metric,
            r.expected if math.isnan(r.within) else f"{r.expected} within {r.within:.0%}",
            _borderline(r),
            number(r.p_holm),
            "yes" if r.held else "NO",
        ]
        for r in c.checks.itertuples(index=False)
    ]
    return columns, rows


def _comparison(r) -> list[str]:
    """Δ with its interval, MDE, test, Holm p and effect of one comparison row."""
    return [
        f"{r.diff:+.4f} [{number(r.diff_ci_low)}, {number(r.diff_ci_high)}]" if not math.isnan(r.diff) else "-",
        number(r.mde),
        r.test or "-",
        number(r.p_holm),
        "-" if math.isnan(r.effect) else f"{r.effect_kind} {r.effect:+.2f}",
    ]


def _marked(verdict: str, c: Comparison, r) -> str:
    """The verdict, marked when a variant it concerns has not converged."""
    names = {r.variant, getattr(r, "against", None)}
    unconverged = [v for v in c.table.loc[c.table["converged"].eq(False), "variant"] if v in names]
    return _borderline(r, verdict) + (f" (not converged: {', '.join(unconverged)})" if unconverged else "")


def _borderline(r, verdict: str | None = None) -> str:
    """The verdict, with its p where it is borderline (`stats.borderline`)."""
    verdict = verdict or r.verdict
    return f"{verdict} (borderline, p {r.p_holm:.3f})" if getattr(r, "borderline", False) else verdict


def count(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def number(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def laws(s: Scaling) -> Table:
    """Each variant's fitted law on each axis, with its bootstrap intervals."""
    columns = ["variant", "x", "sizes", "points", "E [95% CI]", "A [95% CI]", "α [95% CI]", "rmse"]
    rows = [
        [
            r.variant if r.converged else f"{r.variant} (NOT CONVERGED)",
            AXES[r.axis],
            str(r.sizes),
            str(r.points),
            *(
                f"{_g(getattr(r, k))} [{_g(getattr(r, k + '_low'))}, {_g(getattr(r, k + '_high'))}]"
                for k in ("E", "A", "alpha")
            ),
            number(r.rmse),
        ]
        for r in s.laws.itertuples(index=False)
    ]
    return columns, rows


def crossings(s: Scaling) -> Table:
    """Where each pair's fitted laws cross, the interval over the replicates that cross and their share."""
    columns = ["pair", "x", "crossing at [95% CI]", "replicates crossing", "lower at the far end", "where"]
    rows = [
        [
            f"{r.variant} vs {r.against}",
            AXES[r.axis],
            "-" if math.isnan(r.at) else f"{_g(r.at)} [{_g(r.ci_low)}, {_g(r.ci_high)}]",
            "-" if math.isnan(r.share) else f"{r.share:.0%}",
            r.lower_beyond or "-",
            r.where,
        ]
        for r in s.crossings.itertuples(index=False)
    ]
    return columns, rows


def predictions(s: Scaling) -> Table:
    columns = ["variant", "params non-emb", f"{s.metric} [95% CI]", "where"]
    rows = [
        [r.variant, count(r.params), f"{number(r.loss)} [{number(r.ci_low)}, {number(r.ci_high)}]", r.where]
        for r in s.predictions.itertuples(index=False)
    ]
    return columns, rows


def _g(value: float) -> str:
    """Four significant digits: laws' constants span many orders of magnitude."""
    return "-" if math.isnan(value) else f"{value:.4g}"

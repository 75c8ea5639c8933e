"""Scaling laws: per variant, L(x) = E + A·x^(−α) fitted to every seed's final loss at every
size, with x the non-embedding parameters or the training FLOPs; bootstrap intervals over seeds;
where two variants' fitted curves cross, and how far beyond the measured sizes that is.

The fit is least squares over all seeds' points. For a given α the law is linear in E and A, so
each α has its best (E, A) in closed form; α is found on a log grid over (0, MAX_ALPHA] and then
refined by scipy.optimize.minimize_scalar. E is held in [0, the lowest loss measured] (the loss
no size can go below) and A ≥ 0 (loss falls with size). The intervals resample seeds within
each size, the same seeds for every variant (a seed fixes data order and initialisation for
all), refit, and take the 2.5 and 97.5 percentiles over BOOTSTRAP replicates.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import brentq, minimize_scalar

from ablate.core.schema import Param, Tag, metric_column, param_column, tag_column

BOOTSTRAP = 1000
MAX_ALPHA = 4.0
ALPHAS = np.geomspace(1e-3, MAX_ALPHA, 240)
EXTEND = 100  # a crossing is searched up to this many times beyond the largest measured size
AXES = {"params": "non-embedding parameters", "flops": "training FLOPs"}
TRAIN_FLOPS = 3  # forward + backward: three times the forward FLOPs per token


@dataclass
class Law:
    """L(x) = E + A·x^(−alpha)."""

    E: float
    A: float
    alpha: float

    def __call__(self, x):
        return self.E + self.A * np.power(np.asarray(x, dtype=float), -self.alpha)


def fit_law(x: np.ndarray, y: np.ndarray) -> Law | None:
    """The least-squares law through the points; None with fewer than 3 distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(np.unique(x)) < 3:
        return None
    ref = np.exp(np.log(x).mean())  # x in units of its geometric mean keeps x^(−α) near 1
    u = x / ref
    grid = _fits(ALPHAS, u, y)[0]
    best = int(np.argmin(grid))
    low, high = ALPHAS[max(best - 1, 0)], ALPHAS[min(best + 1, len(ALPHAS) - 1)]
    refined = minimize_scalar(lambda a: _fits(np.array([a]), u, y)[0][0], bounds=(low, high), method="bounded").x
    candidates = np.array([refined, ALPHAS[best]])  # the refinement, unless the grid point fits better
    errors, Es, Bs = _fits(candidates, u, y)
    pick = 0 if errors[0] <= errors[1] else 1
    alpha = float(candidates[pick])
    return Law(float(Es[pick]), float(Bs[pick]) * ref**alpha, alpha)  # B·(x/ref)^(−α) = (B·ref^α)·x^(−α)


def _fits(alphas: np.ndarray, u: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each alpha: (squared error, E, B) of the best law y = E + B·u^(−alpha) with
    0 ≤ E ≤ min(y) and B ≥ 0."""
    v = u[None, :] ** -alphas[:, None]
    dv = v - v.mean(axis=1, keepdims=True)
    spread = (dv * dv).sum(axis=1)
    B = np.where(spread > 0, (dv @ (y - y.mean())) / np.where(spread > 0, spread, 1), 0.0).clip(min=0)
    E = y.mean() - B * v.mean(axis=1)
    bound = (E < 0) | (E > y.min())  # there, B is the least-squares slope with E held on its bound
    E = np.where(bound, E.clip(0, y.min()), E)
    B = np.where(bound, ((v * (y - E[:, None])).sum(axis=1) / (v * v).sum(axis=1)).clip(min=0), B)
    residual = y[None, :] - E[:, None] - B[:, None] * v
    return (residual * residual).sum(axis=1), E, B


def points(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per run of a scaling study: variant (as written), size, seed, both x axes, the metric."""
    steps, batch, context = (
        runs[param_column(k)].astype(float)
        for k in (f"{Param.TRAIN}.steps", f"{Param.TRAIN}.batch_size", f"{Param.MODEL}.context")
    )
    return pd.DataFrame(
        {
            "variant": runs[tag_column(Tag.SCALED)],
            "size": runs[tag_column(Tag.SIZE)].astype(float),
            "seed": runs[tag_column(Tag.SEED)].astype(int),
            "params": runs[param_column(Param.N_PARAMS_NON_EMBEDDING)].astype(float),
            "flops": TRAIN_FLOPS * runs[param_column(Param.FLOPS_PER_TOKEN)].astype(float) * steps * batch * context,
            "loss": runs[metric_column(metric)].astype(float),
        }
    ).dropna(subset=["loss"])


def resamples(pts: pd.DataFrame, replicates: int, seed: int = 0) -> list[np.ndarray]:
    """Bootstrap replicates as row positions of pts: at each size, seeds drawn with replacement,
    the same draw for every variant."""
    rng = np.random.default_rng(seed)
    rows = {
        key: np.flatnonzero((pts["size"] == key[0]) & (pts["seed"] == key[1]))
        for key in pts.groupby(["size", "seed"]).groups
    }
    seeds_at = {size: sorted(s for z, s in rows if z == size) for size in sorted({z for z, _ in rows})}
    return [
        np.concatenate([rows[size, s] for size, seeds in seeds_at.items() for s in rng.choice(seeds, len(seeds))])
        for _ in range(replicates)
    ]


@dataclass
class Scaling:
    """The fitted laws of a scaling study (one row per variant and axis, with intervals), the
    crossings of the pairs compared, predictions at requested sizes, and the points and
    replicate laws behind them (for the plots)."""

    metric: str
    points: pd.DataFrame
    laws: pd.DataFrame
    crossings: pd.DataFrame
    predictions: pd.DataFrame
    replicates: dict[tuple[str, str], list[Law]]  # (variant, axis) → the laws fitted to each bootstrap replicate
    bootstrap: int  # replicates drawn


def fit(
    pts: pd.DataFrame,
    metric: str,
    pairs: list[tuple[str, str]],
    at: list[float] = (),
    replicates: int = BOOTSTRAP,
    seed: int = 0,
    unconverged: frozenset[str] = frozenset(),
) -> Scaling:
    """Laws per variant on both axes, the crossing of each pair, and each law at the sizes `at`
    (non-embedding parameters). The laws of `unconverged` variants (some size did not converge)
    are marked so, and a crossing of such a law is no finding."""
    drawn = resamples(pts, replicates, seed)
    laws, fitted, boot = [], {}, {}
    variants, losses = pts["variant"].to_numpy(), pts["loss"].to_numpy()
    for axis in AXES:
        xs = pts[axis].to_numpy()
        for variant, own in pts.groupby("variant", sort=False):
            law = fit_law(own[axis], own["loss"])
            mine = (rows[variants[rows] == variant] for rows in drawn)
            reps = [r for r in (fit_law(xs[rows], losses[rows]) for rows in mine) if r is not None]
            fitted[variant, axis], boot[variant, axis] = law, reps
            laws.append(_law_row(variant, axis, own, law, reps) | {"converged": variant not in unconverged})
    ranges = {(v, axis): (own[axis].min(), own[axis].max()) for v, own in pts.groupby("variant") for axis in AXES}
    crossings = pd.DataFrame(
        [_judged(_crossing(a, b, axis, fitted, boot, ranges), unconverged) for axis in AXES for a, b in pairs],
        columns=["axis", "variant", "against", "at", "ci_low", "ci_high", "share", "lower_beyond", "where"],
    )
    predictions = pd.DataFrame(
        [
            _prediction(v, x, fitted[v, "params"], boot[v, "params"], ranges[v, "params"])
            for v in pts["variant"].unique()
            for x in at
        ],
        columns=["variant", "params", "loss", "ci_low", "ci_high", "where"],
    )
    return Scaling(metric, pts, pd.DataFrame(laws), crossings, predictions, boot, replicates)


def _law_row(variant: str, axis: str, own: pd.DataFrame, law: Law | None, reps: list[Law]) -> dict:
    row = {"variant": variant, "axis": axis, "sizes": own["size"].nunique(), "points": len(own)}
    for name in ("E", "A", "alpha"):
        values = np.array([getattr(r, name) for r in reps])
        row[name] = getattr(law, name) if law else np.nan
        row[f"{name}_low"], row[f"{name}_high"] = np.percentile(values, [2.5, 97.5]) if len(values) else (np.nan,) * 2
    row["rmse"] = float(np.sqrt(np.mean((law(own[axis]) - own["loss"]) ** 2))) if law else np.nan
    row["E_on_bound"] = law is not None and not 0 < law.E < own["loss"].min()
    return row


def bound_notes(s: Scaling) -> list[str]:
    """A line for each law whose floor E sits on its bound (0, or the lowest loss measured): the
    points do not pin the floor down, and A and α are those of the bounded fit."""
    return [
        f"{r.variant} against {AXES[r.axis]}: E sits on its bound ({r.E:.4g}); the sizes measured do not "
        "identify the floor, so A and α are those of a law with the floor held there"
        for r in s.laws.itertuples(index=False)
        if r.E_on_bound
    ]


def convergence_notes(s: Scaling) -> list[str]:
    """A line for each variant whose law is fitted to points that did not converge."""
    unconverged = s.laws.loc[~s.laws["converged"], "variant"].unique()
    return [
        f"{v}: NOT CONVERGED at some size (see its rows in the table); its law describes learning speed at this "
        "budget, not how loss scales, and no crossing of it is a finding"
        for v in unconverged
    ]


def _judged(row: dict, unconverged: frozenset[str]) -> dict:
    """A crossing row, marked no finding where either law is fitted to unconverged points."""
    late = [v for v in (row["variant"], row["against"]) if v in unconverged]
    if not late:
        return row
    return row | {"where": f"NO FINDING ({', '.join(late)} not converged): {row['where']}"}


def crossing(f: Law, g: Law, lo: float, hi: float) -> float | None:
    """The smallest x in [lo, hi] where the two laws are equal (None where one stays below)."""
    xs = np.geomspace(lo, hi, 400)
    d = f(xs) - g(xs)
    change = np.nonzero(np.sign(d[:-1]) * np.sign(d[1:]) <= 0)[0]
    if not len(change):
        return None
    i = change[0]
    if d[i] == 0:
        return float(xs[i])
    return float(np.exp(brentq(lambda t: float(f(np.exp(t)) - g(np.exp(t))), np.log(xs[i]), np.log(xs[i + 1]))))


def _crossing(a: str, b: str, axis: str, fitted: dict, boot: dict, ranges: dict) -> dict:
    """Where a's and b's laws cross, with the interval of the replicates that cross and their share."""
    measured = (min(ranges[a, axis][0], ranges[b, axis][0]), max(ranges[a, axis][1], ranges[b, axis][1]))
    lo, hi = measured[0], measured[1] * EXTEND
    row = {"axis": axis, "variant": a, "against": b, "at": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    f, g = fitted[a, axis], fitted[b, axis]
    if f is None or g is None:
        return row | {"share": np.nan, "lower_beyond": "", "where": "no law (fewer than 3 sizes)"}
    found = [crossing(r, s, lo, hi) for r, s in zip(boot[a, axis], boot[b, axis])]
    found = np.array([x for x in found if x is not None])
    row["share"] = len(found) / max(len(boot[a, axis]), 1)
    if len(found):
        row["ci_low"], row["ci_high"] = np.percentile(found, [2.5, 97.5])
    x = crossing(f, g, lo, hi)
    if x is None:
        return row | {"lower_beyond": a if f(hi) < g(hi) else b, "where": f"no crossing up to {hi:.3g}"}
    return row | {"at": x, "lower_beyond": a if f(hi) < g(hi) else b, "where": reach(x, measured)}


def reach(x: float, measured: tuple[float, float]) -> str:
    """Where x lies against the measured range: inside it, or how many times beyond (flagged)."""
    if x > measured[1]:
        return f"EXTRAPOLATED {x / measured[1]:.3g}× beyond the largest measured"
    if x < measured[0]:
        return f"EXTRAPOLATED {measured[0] / x:.3g}× below the smallest measured"
    return "within the measured range"


def _prediction(variant: str, x: float, law: Law | None, reps: list[Law], measured: tuple[float, float]) -> dict:
    values = np.array([r(x) for r in reps])
    low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (np.nan, np.nan)
    loss = float(law(x)) if law else np.nan
    return {"variant": variant, "params": x, "loss": loss, "ci_low": low, "ci_high": high, "where": reach(x, measured)}

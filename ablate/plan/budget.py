"""Equal budgets: solve each variant's free dimension so that every trial has the same
parameter count (or forward FLOPs per token), within a tolerance."""

import math
from collections.abc import Callable

from ablate.core.config import ModelConfig
from ablate.core.errors import AblateError, first_line
from ablate.core.questions import Budget
from ablate.model import build_model
from ablate.plan.flops import flops_per_token

FINE_STEP = 8  # the second, finer dimension moves in multiples of 8
FINE_SPREAD = 4  # the finer dimension is tried at this many primary steps either side of the solution
MAX_STEPS = 1 << 14  # a dimension is never searched beyond 2^14 steps


_MEASURED: dict[tuple[str, str], float | None] = {}  # (a model's JSON, what) → the count, None: it does not build
_UNBUILT: dict[str, str] = {}  # mixer → why its last probe that did not build failed


def measure(budget: Budget, model: ModelConfig) -> float | None:
    """The budgeted quantity of a model; None when the model does not build. Each is measured
    (on the meta device) once per process, however many probes ask for it."""
    what = "flops" if budget.params is None else budget.count
    key = (model.model_dump_json(), what)
    if key not in _MEASURED:
        try:
            built = build_model(model, device="meta")
        except (AblateError, ValueError) as e:
            _MEASURED[key], _UNBUILT[model.mixer] = None, first_line(e)
        else:
            _MEASURED[key] = flops_per_token(built) if what == "flops" else built.n_params(what == "non_embedding")
    return _MEASURED[key]


def solve(model: ModelConfig, budget: Budget, scale: str) -> ModelConfig:
    """The model with `scale` (and, if needed, a finer width) set to meet the budget.

    Every budgeted quantity grows with every dimension, so each is found by bisection. The
    primary dimension moves in multiples of n_heads for d_model (of lcm(n_heads, 8) for qkv_dim,
    8 for ffn_dim, 1 for n_layers); `width` moves d_model so, with qkv_dim (a multiple of n_heads)
    and ffn_dim kept in the proportion to d_model written in the model.
    When neither neighbour of the solution lands within the tolerance, ffn_dim (or qkv_dim,
    when there is no FFN or ffn_dim is the primary) moves in multiples of 8, tried at the primary
    values up to FINE_SPREAD steps either side, nearest first: the first within the tolerance wins.
    """
    if scale == "ffn_dim" and not model.ffn:
        raise AblateError("scale ffn_dim needs an FFN (ffn: true)")
    grown, primary = _grower(model, scale), "d_model" if scale == "width" else scale
    step = _step(model, primary)
    lo_side, hi_side = _neighbours(budget, grown)
    if lo_side is None and hi_side is None:
        why = _UNBUILT.get(model.mixer, "")
        raise AblateError(f"no {scale} builds a model for the budget of {budget.describe()}{f': {why}' if why else ''}")
    best = min((c for c in (lo_side, hi_side) if c is not None), key=lambda c: _error(budget, c), default=None)
    if best is not None and _error(budget, best) <= budget.tolerance:
        return best
    fine = "ffn_dim" if model.ffn and scale != "ffn_dim" else "qkv_dim"
    if fine != scale:
        middle = getattr(lo_side or hi_side, primary) // step
        nearest_first = sorted(
            range(max(1, middle - FINE_SPREAD), middle + FINE_SPREAD + 2), key=lambda k: abs(k - middle)
        )
        for k in nearest_first:
            for adjusted in _neighbours(budget, _grower(grown(k), fine)):
                if adjusted is not None and _error(budget, adjusted) < _error(budget, best):
                    best = adjusted
            if _error(budget, best) <= budget.tolerance:
                return best
    if best is None:
        raise AblateError(f"no {scale} builds a model for the budget of {budget.describe()}")
    if _error(budget, best) > budget.tolerance:
        reached = measure(budget, best)
        raise AblateError(
            f"cannot reach {budget.describe()} within {budget.tolerance:.1%} by scaling {scale}"
            f"{'' if fine == scale else f' and {fine}'}: the closest reachable is {reached:,.0f} "
            f"({_error(budget, best):+.1%}, {primary}={getattr(best, primary)}"
            f"{'' if fine == scale else f', {fine}={getattr(best, fine)}'})"
        )
    return best


def _grower(model: ModelConfig, scale: str) -> Callable[[int], ModelConfig]:
    """k → the model with its scaled dimension at k steps (see `solve`)."""
    if scale != "width":
        step = _step(model, scale)
        return lambda k: model.model_copy(update={scale: k * step})
    heads, step = model.n_heads, _step(model, "d_model")
    qkv_ratio, ffn_ratio = model.qkv_dim / model.d_model, model.ffn_dim / model.d_model

    def at(k: int) -> ModelConfig:
        d = k * step
        qkv, ffn = max(1, round(qkv_ratio * d / heads)) * heads, max(1, round(ffn_ratio * d))
        return model.model_copy(update={"d_model": d, "qkv_dim": qkv, "ffn_dim": ffn})

    return at


def _step(model: ModelConfig, dim: str) -> int:
    if dim == "n_layers":
        return 1
    if dim == "ffn_dim":
        return FINE_STEP
    if dim == "qkv_dim":  # divisible by heads, and by 8 as a fine dimension
        return math.lcm(model.n_heads, FINE_STEP)
    return model.n_heads


def _error(budget: Budget, model: ModelConfig | None) -> float:
    value = measure(budget, model) if model is not None else None
    return float("inf") if value is None else abs(value - budget.target) / budget.target


def _neighbours(budget: Budget, at: Callable[[int], ModelConfig]):
    """The model at the largest step k at or below the target, and at the next one up (either None
    where no such model builds)."""

    def below(k: int) -> bool:  # a model that does not build counts as below: larger ones may build
        value = measure(budget, at(k))
        return value is None or value <= budget.target

    if not below(1):
        return None, at(1)
    lo, hi = 1, 2
    while hi <= MAX_STEPS and below(hi):
        lo, hi = hi, hi * 2
    if hi > MAX_STEPS:
        return (at(lo) if measure(budget, at(lo)) is not None else None), None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if below(mid) else (lo, mid)
    return (at(lo) if measure(budget, at(lo)) is not None else None), at(hi)

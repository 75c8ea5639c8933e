"""Equal budgets: the solver lands every trial within the tolerance, or says how close it can get."""

from pathlib import Path

import pytest
import torch

from ablate.core.config import ModelConfig
from ablate.core.errors import AblateError
from ablate.core.questions import Budget
from ablate.mixers import registry
from ablate.mixers.registry import Mixer, register
from ablate.model import build_model
from ablate.plan import study as study_mod
from ablate.plan.budget import solve
from ablate.plan.flops import ElementwiseCount, flops_per_token
from tests.conftest import write_study

ROOT = Path(__file__).resolve().parents[1]


def test_every_ffn_necessity_trial_is_within_one_percent_of_its_budget():
    study = study_mod.load(ROOT / "studies" / "ffn_necessity.yaml")
    budget = study.config.budget
    assert budget is not None and budget.count == "non_embedding" and budget.tolerance == 0.01
    for trial in study.trials:
        counted = build_model(trial.model).n_params(non_embedding=True)  # a real model, not the planner's number
        assert counted == trial.n_params_non_embedding
        assert abs(counted - budget.params) <= 0.01 * budget.params, trial.variant
    # the families whose layers are all 4·qkv·d + 3·ffn·d land exactly (but for mha's gain per head and
    # layer) at the width written in the study
    exact = {t.variant: t.model.d_model for t in study.trials if 0 <= t.n_params_non_embedding - budget.params < 32}
    assert {"mha", "mha-no-ffn", "aft", "aft-no-ffn", "hybrid", "hybrid-heads"} <= set(exact)
    assert exact["mha"] == 64


@pytest.mark.parametrize("scale", ["d_model", "n_layers", "ffn_dim", "qkv_dim"])
@pytest.mark.parametrize("count", ["total", "non_embedding"])
def test_each_scale_meets_a_parameter_budget(scale, count):
    model = ModelConfig(mixer="mha", vocab_size=512, context=32, d_model=32, n_layers=2, n_heads=2, qkv_dim=32)
    budget = Budget(params=120_000, count=count, tolerance=0.01)
    solved = solve(model, budget, scale)
    built = build_model(solved)
    assert abs(built.n_params(count == "non_embedding") - 120_000) <= 1200
    assert solved.qkv_dim % solved.n_heads == 0
    assert solved.d_model % solved.n_heads == 0
    untouched = {"d_model", "n_layers", "ffn_dim", "qkv_dim"} - {scale, "ffn_dim" if scale != "ffn_dim" else "qkv_dim"}
    assert all(getattr(solved, k) == getattr(model, k) for k in untouched)


def test_an_unreachable_budget_names_the_variant_and_the_closest_count(tmp_path):
    path = write_study(
        tmp_path,
        """\
        name: tight
        model: {preset: strawberry, context: 32, d_model: 32, n_layers: 2, n_heads: 2, qkv_dim: 32, ffn_dim: 64}
        variants:
          - {name: wide, model: {mixer: mha}, scale: n_layers}
        budget: {params: 150000, tolerance: 0.001}
        """,
    )
    model = ModelConfig(mixer="mha", context=32, d_model=32, n_layers=2, n_heads=2, qkv_dim=32, ffn_dim=64)
    with pytest.raises(AblateError) as error:
        study_mod.load(path)
    message = str(error.value)
    assert "variant 'wide'" in message
    assert "cannot reach 150,000 non-embedding parameters within 0.1% by scaling n_layers and ffn_dim" in message
    # the closest count it names is one that really exists
    closest = int(message.split("the closest reachable is ")[1].split(" ")[0].replace(",", ""))
    layers = int(message.split("n_layers=")[1].split(",")[0])
    ffn_dim = int(message.split("ffn_dim=")[1].rstrip(")"))
    shape = model.model_copy(update={"n_layers": layers, "ffn_dim": ffn_dim})
    assert build_model(shape).n_params(non_embedding=True) == closest
    assert abs(closest - 150_000) / 150_000 > 0.001


class _Gated(Mixer):
    """y = W(σ(x) ⊙ x): two element-wise ops writing T·d elements each, and one product."""

    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.out = torch.nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x):
        return self.out(torch.sigmoid(x) * x)


class _Plain(_Gated):
    def forward(self, x):
        return self.out(x)


def test_flops_per_token_counts_a_mixers_element_wise_work_without_a_declaration(monkeypatch):
    """Known answer: a sigmoid and a product per element of (T, d) are 2·d per token and layer;
    the backbone's own element-wise work (norms, FFN, loss) is left out, as it is every variant's."""
    registry.variants()  # every family loaded before the registry is copied
    monkeypatch.setattr(registry, "_MIXERS", dict(registry._MIXERS))
    register("test-gated")(_Gated)
    register("test-plain")(_Plain)
    shape = {"vocab_size": 64, "context": 16, "d_model": 32, "n_layers": 3, "n_heads": 2, "qkv_dim": 32}
    gated, plain = (build_model({**shape, "mixer": m}, device="meta") for m in ("test-gated", "test-plain"))
    assert flops_per_token(gated) - flops_per_token(plain) == 3 * 2 * 32
    assert flops_per_token(gated, training=True) - flops_per_token(plain, training=True) == 3 * 3 * 2 * 32


def test_flops_per_token_is_twice_the_matmul_weights_plus_the_mixers_element_wise_work():
    """aft-simple has no attention product: every counted FLOP is a weight's multiply-add."""
    cfg = {"mixer": "aft-simple", "vocab_size": 512, "context": 32, "d_model": 32, "n_layers": 2, "n_heads": 2}
    cfg |= {"qkv_dim": 32, "ffn_dim": 64}
    model = build_model(cfg, device="meta")
    head = 2 * 32 * 512  # the tied output map is a product too; the embedding lookup is not
    with ElementwiseCount(model) as count, torch.no_grad():
        model(torch.zeros(1, 32, dtype=torch.long, device="meta"))
    assert count.total > 0
    assert flops_per_token(model) == pytest.approx(2 * model.n_params(non_embedding=True) + head + count.total / 32)


def test_a_flops_budget_is_met_by_every_trial(tmp_path):
    path = write_study(
        tmp_path,
        """\
        name: iso-compute
        model: {context: 64, d_model: 32, n_layers: 2, n_heads: 2, qkv_dim: 32, ffn_dim: 64}
        variants:
          - {name: mha, model: {mixer: mha}}
          - {name: aft, model: {mixer: aft-simple}, scale: n_layers}
          - {name: retnet, model: {mixer: retnet, ffn: false}, scale: qkv_dim}
        budget: {flops_per_token: 600000, tolerance: 0.02}
        """,
    )
    study = study_mod.load(path)
    for trial in study.trials:
        measured = flops_per_token(build_model(trial.model, device="meta"))
        assert measured == pytest.approx(trial.flops_per_token)
        assert abs(measured - 600_000) <= 0.02 * 600_000, trial.variant


def test_state_sizes():
    base = {"vocab_size": 64, "context": 16, "d_model": 16, "n_layers": 3, "n_heads": 2, "qkv_dim": 16, "ffn_dim": 32}
    assert build_model({**base, "mixer": "mha"}).state_size() is None  # a KV cache grows with the sequence
    assert build_model({**base, "mixer": "mha", "mixer_options": {"window": 4}}).state_size() == 3 * 2 * 4 * 16
    assert build_model({**base, "mixer": "retnet"}).state_size() == 3 * 2 * 8 * 8  # a d×d state per head
    assert build_model({**base, "mixer": "aft-simple"}).state_size() == 3 * 3 * 16


SMALL = {"vocab_size": 256, "context": 64, "d_model": 64, "n_layers": 2, "n_heads": 2, "qkv_dim": 64, "ffn_dim": 128}


@pytest.mark.parametrize("ffn", [True, False], ids=["ffn", "no-ffn"])
@pytest.mark.parametrize("params", [100_000, 77_777, 50], ids=["small", "odd", "impossible"])
@pytest.mark.parametrize("mixer", [m for m in __import__("ablate").variants() if not m.startswith("test-")])
def test_every_mixer_meets_a_small_or_odd_budget_or_says_why_in_one_line(mixer, params, ffn):
    """The solver, against every registered mixer: a model within the tolerance, or an AblateError
    of one line (never a traceback from inside the solver)."""
    model = build_model(ModelConfig(mixer=mixer, ffn=ffn, **SMALL), device="meta").cfg  # resolved, as plan has it
    budget = Budget(params=params, count="non_embedding")
    try:
        solved = solve(model, budget, "d_model")
    except AblateError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert abs(build_model(solved, device="meta").n_params(True) - params) <= budget.tolerance * params

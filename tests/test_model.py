"""Parameter counts, causality of every registered mixer, and AFT numerics."""

from pathlib import Path

import pytest
import torch

import ablate
from ablate import audit, registry, study
from ablate.layers import causal_softmax_mean

STUDIES = Path(__file__).resolve().parents[1] / "studies"
SEED_SHAPE = dict(vocab_size=8192, context=256, d_model=96, n_heads=6, qkv_dim=384, ffn_dim=384)


def test_mha_at_seed_shape_has_the_published_parameter_count():
    model = ablate.build_model({"mixer": "mha", "n_layers": 4, **SEED_SHAPE})
    assert model.n_params() == 1_818_624
    assert model.n_params(non_embedding=True) == 1_032_192


@pytest.mark.parametrize("name", ["ffn_necessity", "smoke"])
def test_plan_counts_equal_the_built_models(name):
    for trial in study.load(STUDIES / f"{name}.yaml").trials:
        model = ablate.build_model(trial.model)
        assert trial.n_params == sum(p.numel() for p in model.parameters())
        assert trial.n_params_non_embedding == trial.n_params - model.embed.weight.numel()


def test_ffn_necessity_variants_have_equal_parameter_counts():
    counts = {t.n_params_non_embedding for t in study.load(STUDIES / "ffn_necessity.yaml").trials}
    assert counts == {163_840}


def _configs():
    base = dict(vocab_size=50, context=24, d_model=16, n_layers=2, n_heads=2, qkv_dim=16, ffn_dim=32)
    for name in ablate.variants():
        for ffn in (True, False):
            yield pytest.param({"mixer": name, "ffn": ffn, **base}, id=f"{name}-ffn{int(ffn)}")
    yield pytest.param({"mixer": "mha", "mixer_options": {"window": 5}, **base}, id="mha-window")
    yield pytest.param({"mixer": "mha", "mixer_options": {"rope": False, "qk_norm": False}, **base}, id="mha-plain")
    yield pytest.param({"mixer": "aft-simple", "mixer_options": {"qk_norm": True}, **base}, id="aft-qknorm")


@pytest.mark.parametrize("config", _configs())
def test_every_mixer_is_causal_unless_marked_otherwise(config):
    torch.manual_seed(0)
    model = ablate.build_model(config).eval()
    B, T = 3, config["context"]
    idx = torch.randint(0, config["vocab_size"], (B, T))
    if not registry.mixer_class(config["mixer"]).causal:  # the mark must be true: it does leak
        assert not audit.is_causal(audit.max_leak(config))
        return
    with torch.no_grad():
        logits = model(idx)
        for t in (0, 1, T // 2, T - 1):  # change position t: positions < t must not move
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % config["vocab_size"]
            diff = (model(changed) - logits).abs()
            assert diff[:, :t].max().item() <= 1e-5 if t else True
            assert diff[:, t:].max().item() > 0  # the change is seen from t on
        other = idx.clone()
        other[1:] = torch.randint(0, config["vocab_size"], (B - 1, T))
        assert (model(other)[0] - logits[0]).abs().max().item() <= 1e-5  # other sequences never leak in

    embeddings = {}

    def keep(module, inputs, output):
        output.retain_grad()
        embeddings["x"] = output

    model.embed.register_forward_hook(keep)
    for t in (0, T // 2, T - 2):
        model.zero_grad()
        model(idx)[0, t].sum().backward()
        grad = embeddings["x"].grad
        assert grad[0, t + 1 :].abs().max().item() == 0.0  # exactly zero towards the future
        assert grad[1:].abs().max().item() == 0.0
        assert grad[0, : t + 1].abs().max().item() > 0


def _reference_mean(k, v):
    """O(T²) float64 softmax-weighted means, the definition written out."""
    k, v = k.double(), v.double()
    T = k.size(1)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    scores = k.unsqueeze(1).expand(-1, T, -1, -1).masked_fill(~mask[None, :, :, None], float("-inf"))
    return (torch.softmax(scores, dim=2) * v.unsqueeze(1)).sum(2)


def test_aft_sums_match_the_definition():
    torch.manual_seed(0)
    k, v = torch.randn(2, 40, 6), torch.randn(2, 40, 6)
    torch.testing.assert_close(causal_softmax_mean(k, v).double(), _reference_mean(k, v), atol=1e-5, rtol=1e-5)


def test_aft_is_stable_for_long_sequences_with_large_keys():
    torch.manual_seed(0)
    k = (torch.randn(1, 4096, 3) * 1000).requires_grad_()  # exp would overflow float32 at 89
    v = torch.randn(1, 4096, 3)
    y = causal_softmax_mean(k, v)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(k.grad).all()
    ref = _reference_mean(k.detach()[:, :400], v[:, :400])
    # At |k| ≈ 1000 one float32 ulp of a key is 6e-5, and the weights move by that much.
    torch.testing.assert_close(y.detach()[:, :400].double(), ref, atol=5e-4, rtol=0)
    assert y.abs().max() <= v.abs().max() + 1e-4  # a weighted mean stays inside the values

"""The backbone's switches and presets: each counted exactly, validated up front, causal with every
mixer, and a study of the seed's backbone keeps its trial keys across their arrival."""

import pytest
import torch

import ablate
from ablate.core.config import PRESETS, ModelConfig
from ablate.core.errors import AblateError
from ablate.inference import audit
from ablate.plan import study as study_mod
from tests.conftest import TINY_STUDY, write_study

V, T, C, L, H, D, F = 50, 16, 24, 2, 2, 32, 40
SHAPE = {"vocab_size": V, "context": T, "d_model": C, "n_layers": L, "n_heads": H, "qkv_dim": D, "ffn_dim": F}


def count(mixer: str = "mha", **switches) -> tuple[int, int]:
    model = ablate.build_model({"mixer": mixer, **SHAPE, **switches})
    return model.n_params(), model.n_params(non_embedding=True)


def mha_closed_form(ffn_type="swiglu", norm="rms", norm_bias=False, bias=False, pos="rope", tie=True, qk=True):
    """Total and non-embedding parameters of mha on the backbone, from the switches."""
    ffn_weights = (3 if ffn_type == "swiglu" else 2) * C * F
    ffn_bias = ((2 * F if ffn_type == "swiglu" else F) + C) if bias else 0
    attention = 4 * C * D + (3 * D + C if bias else 0) + (H if qk else 0)
    norms = 2 * L + 1 + 1  # two per block, the final one and the embedding's (embed_norm on)
    norm_params = norms * C * (1 + norm_bias) if norm == "layer" else 0
    body = L * (attention + ffn_weights + ffn_bias) + norm_params
    tables = V * C + (T * C if pos == "learned" else 0) + (0 if tie else V * C)
    return body + tables, body


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"ffn_type": "gelu"},
        {"ffn_type": "relu2"},
        {"norm": "layer"},
        {"norm": "layer", "norm_bias": True},
        {"bias": True},
        {"bias": True, "ffn_type": "relu2"},
        {"pos": "learned"},
        {"tie_embeddings": False},
        {"qk_norm": False},
    ],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "seed",
)
def test_every_switch_is_counted_exactly(switches):
    keys = {"norm_bias": "norm_bias", "tie_embeddings": "tie", "qk_norm": "qk"}
    form = {keys.get(k, k): v for k, v in switches.items()}
    assert count(**switches) == mha_closed_form(**form)


def test_a_layernorm_bias_follows_bias_and_presets_yield_to_the_keys_given():
    assert ModelConfig(mixer="mha", norm="layer", bias=True).norm_bias
    nano = ModelConfig(mixer="mha", preset="nanogpt", bias=True, pos="rope")
    assert (nano.norm, nano.norm_bias, nano.pos, nano.ffn_type) == ("layer", True, "rope", "gelu")
    assert (
        ModelConfig(mixer="mha", preset="modern").switches() == ModelConfig(mixer="mha", **PRESETS["modern"]).switches()
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("pos: absolute", "study.yaml:3: model.pos: Input should be 'rope', 'alibi', 'learned' or 'none'"),
        ("norm_bias: true", "study.yaml:6: variants.0.model: norm_bias needs norm: layer"),  # the merged model
        ("preset: gpt3", "study.yaml:3: model.preset: Input should be 'strawberry', 'nanogpt' or 'modern'"),
        ("dropout: 1.5", "study.yaml:3: model.dropout: Input should be less than 1"),
    ],
)
def test_a_bad_switch_is_one_line_naming_it(tmp_path, setting, message):
    text = TINY_STUDY.replace("model: {context: 32,", f"model: {{{setting}, context: 32,")
    with pytest.raises(AblateError) as e:
        study_mod.load(write_study(tmp_path, text))
    assert str(e.value).split("/")[-1] == message or str(e.value).split("/")[-1].startswith(message), str(e.value)


@pytest.mark.parametrize("preset", ["strawberry", "nanogpt", "modern"])
@pytest.mark.parametrize("mixer", [name for name in ablate.variants() if name != "retention"] + ["retention"])
def test_every_mixer_is_causal_and_measurable_on_every_backbone(preset, mixer):
    cfg = {"mixer": mixer, **SHAPE, "context": 64, "preset": preset, "dropout": 0.1}
    meta = ablate.build_model(cfg, device="meta")
    meta(torch.zeros(1, 64, dtype=torch.long, device="meta"))  # plan, budgets and FLOPs build it so
    torch.manual_seed(0)
    model = ablate.build_model(cfg)
    with torch.no_grad():  # modern's zero residual maps would hide a leak: give them weights
        for block in model.blocks:
            for m in block.residual_maps():
                m.weight.normal_(0, 0.1)
    leak = audit.model_leak(model)
    assert audit.is_causal(leak) == model.causal, leak


def test_modern_init_zeroes_the_residual_maps_and_nothing_else():
    model = ablate.build_model({"mixer": "mha", **SHAPE, "preset": "modern"})
    residual = {id(m.weight) for block in model.blocks for m in block.residual_maps()}
    for name, p in model.named_parameters():
        if id(p) in residual:
            assert not p.any(), name
        elif p.dim() == 2:
            assert p.std() > 0, name
    assert model.head is not None and model.head.weight.std() > 0


def test_dropout_drops_in_training_only():
    model = ablate.build_model({"mixer": "mha", **SHAPE, "dropout": 0.3})
    idx = torch.randint(0, V, (2, T))
    model.train()
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))


def test_a_study_of_the_seeds_backbone_keeps_its_trial_keys(tmp_path):
    """The keys the tiny study's trials had before the switches and presets existed."""
    text = TINY_STUDY.replace("model: {context: 32,", "model: {preset: strawberry, context: 32,")
    planned = study_mod.load(write_study(tmp_path, text))
    keys = [(t.variant, t.seed, t.key(planned.config.data)) for t in planned.trials]
    assert keys == [
        ("mha", 0, "d7926472e3d5e0cd"),
        ("mha", 1, "c6c9a18564ec8229"),
        ("aft", 0, "a73d489506f52658"),
        ("aft", 1, "3a8dc6edb943e522"),
    ]

"""Strawberry checkpoints: the seed's format loads into ablate's retention and gives the seed's logits."""

import pytest
import torch
from seed_checkpoints import PUBLISHED, seed_checkpoint
from test_retention import reference_logits

import ablate
from ablate.core.errors import AblateError


@pytest.mark.parametrize(
    ("scope", "batch", "T"), [("batch", 2, 6), ("sequence", 2, 5), ("chunk", 1, 36)], ids=["batch", "sequence", "chunk"]
)
def test_a_seed_checkpoint_gives_the_reference_logits_at_the_published_shape(scope, batch, T):
    """Published shape, float64, the spec's formulas position by position; chunk scope past its first chunk."""
    checkpoint = seed_checkpoint(prefix="_orig_mod.")  # a compiled model's keys
    model = ablate.load_strawberry(checkpoint, scope=scope)
    assert model.n_params() == 1_818_624 and model.n_params(non_embedding=True) == 1_032_192
    assert model.causal == (scope == "chunk")
    idx = torch.randint(0, 8192, (batch, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(idx)
    state = {k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()}
    torch.testing.assert_close(got, reference_logits(state, PUBLISHED, idx, scope), atol=1e-10, rtol=0)


def test_a_saved_checkpoint_loads_from_its_path_with_its_weights(tmp_path):
    checkpoint = seed_checkpoint(dtype=torch.float32, seed=3)
    torch.save(checkpoint, tmp_path / "ck.strawberry")
    model = ablate.load_strawberry(tmp_path / "ck.strawberry")
    assert model.embed.weight.dtype == torch.float32
    assert model.blocks[0].mixer.rotary.cos.dtype == torch.float64  # the tables are not rounded on the way
    assert torch.equal(model.embed.weight, checkpoint["model"]["unembed.weight"])
    assert torch.equal(model.blocks[1].mixer.transform.weight, checkpoint["model"]["blocks.1.retain.t.weight"])
    assert torch.equal(model.blocks[0].ffn.w_out.weight, checkpoint["model"]["blocks.0.swiglu.out.weight"])
    assert model.cfg.mixer_options["scope"] == "batch" and not model.causal


def test_a_float32_checkpoint_looked_at_in_float64_gives_the_float64_logits():
    """`.double()` on a loaded float32 checkpoint, even after a `.float()`: the
    rotary tables are float64 still, so the logits are those of the float64 model with the same
    (float32-exact) weights, to float64 rounding."""
    checkpoint = seed_checkpoint(SMALL, dtype=torch.float32, seed=2)
    model = ablate.load_strawberry(checkpoint).float().double()
    exact = {k: v.double() for k, v in checkpoint["model"].items()}
    idx = torch.randint(0, SMALL["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(idx)
    torch.testing.assert_close(got, reference_logits(exact, SMALL, idx, "batch"), atol=1e-10, rtol=0)


SMALL = {**PUBLISHED, "vocab_size": 20, "n_embd": 8, "n_qkv": 12, "n_ffn": 16, "n_head": 2}


def _broken(change):
    checkpoint = seed_checkpoint(SMALL)
    change(checkpoint)
    return checkpoint


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["model"].pop("blocks.1.retain.t.weight"), "lacks 'blocks.1.retain.t.weight'"),
        (lambda c: c["model"].update({"blocks.0.retain.gate.weight": torch.zeros(1)}), "'blocks.0.retain.gate.weight'"),
        (lambda c: c["model"].update({"blocks.2.swiglu.out.weight": torch.zeros(1)}), "'blocks.2.swiglu.out.weight'"),
        (
            lambda c: c["model"].update({"blocks.0.retain.w_attn_out": torch.zeros(8, 9, dtype=torch.float64)}),
            "'blocks.0.retain.w_attn_out' has shape (8, 9); its hyperparameters give (8, 8)",
        ),
        (
            lambda c: c["model"].update({"unembed.weight": torch.zeros(20, 8)}),
            "embed.weight and unembed.weight differ; the model ties them",
        ),
        (lambda c: c["hyperparams"].pop("r_layer"), "lack 'r_layer'"),
        (lambda c: c["hyperparams"].update({"n_kv_head": 2}), "unknown Strawberry hyperparameter 'n_kv_head'"),
        (lambda c: c["hyperparams"].update({"n_head": 5}), "qkv_dim 12 is not divisible by n_heads 5"),
        (lambda c: c.pop("hyperparams"), "no 'hyperparams' dict"),
    ],
)
def test_a_damaged_checkpoint_is_a_one_line_error_naming_the_key(change, message):
    with pytest.raises(AblateError, match=None) as e:
        ablate.load_strawberry(_broken(change))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(AblateError, match="cannot read the checkpoint .*notes.txt"):
        ablate.load_strawberry(tmp_path / "notes.txt")

"""Parameter counts, causality of every registered mixer and option, and gradients to every parameter."""

from pathlib import Path

import pytest
import torch

import ablate
from ablate.inference import audit
from ablate.plan import study
from ablate.train import diagnostics

STUDIES = Path(__file__).resolve().parents[1] / "studies"
SEED_SHAPE = {"vocab_size": 8192, "context": 256, "d_model": 96, "n_heads": 6, "qkv_dim": 384, "ffn_dim": 384}


def test_mha_at_seed_shape_has_the_published_parameter_count_and_a_gain_per_head():
    """Per layer: W_qkv (96·3·384), W_o (384·96), the SwiGLU (3·96·384) and 6 QK gains."""
    model = ablate.build_model({"mixer": "mha", "n_layers": 4, **SEED_SHAPE})
    per_layer = 96 * 3 * 384 + 384 * 96 + 3 * 96 * 384 + 6
    assert model.n_params(non_embedding=True) == 4 * per_layer == 1_032_192 + 24
    assert model.n_params() == 4 * per_layer + 8192 * 96 == 1_818_624 + 24
    plain = ablate.build_model({"mixer": "mha", "n_layers": 4, "mixer_options": {"qk_norm": False}, **SEED_SHAPE})
    assert plain.n_params() == 1_818_624


def test_mha_gains_start_at_one_and_sharpen_attention():
    """The backbone's draw does not overwrite the gains; a gain of g multiplies every score by g."""
    model = ablate.build_model(
        {
            "mixer": "mha",
            "vocab_size": 32,
            "context": 8,
            "d_model": 16,
            "n_heads": 2,
            "qkv_dim": 16,
            "n_layers": 1,
            "ffn": False,
        }
    )
    mixer = model.blocks[0].mixer
    assert torch.equal(mixer.qk_gain.detach(), torch.ones(2))
    x = torch.randn(1, 8, 16)
    flat = mixer.attention_probs(x)
    with torch.no_grad():
        mixer.qk_gain.fill_(4.0)
    sharp = mixer.attention_probs(x)
    q, k, _ = mixer.heads(x)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    assert scores.abs().max() > 8**0.5  # beyond the bound √d of plain QK-norm
    assert diagnostics.attention_entropy(sharp) < diagnostics.attention_entropy(flat)


def test_retention_at_seed_shape_has_the_published_parameter_count():
    for scope in ("chunk", "sequence", "batch"):
        config = {"mixer": "retention", "mixer_options": {"scope": scope}, "n_layers": 2, **SEED_SHAPE}
        model = ablate.build_model(config)
        assert model.n_params() == 1_818_624
        assert model.n_params(non_embedding=True) == 1_032_192


SHIPPED = sorted(p.stem for p in STUDIES.glob("*.yaml"))


LOCAL_TEXT = {"shakespeare_char"}  # studies that read a local text, given with --data


@pytest.mark.parametrize("name", SHIPPED)
def test_plan_counts_equal_the_built_models(name, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be: that is the question.\n" * 50)
    source = str(text) if name in LOCAL_TEXT else None
    for trial in study.load(STUDIES / f"{name}.yaml", data_source=source).trials:
        model = ablate.build_model(trial.model, device="meta")
        assert trial.n_params == sum(p.numel() for p in model.parameters())
        tables = {"embed.weight", "pos_embed.weight", "head.weight"}  # the token, position and output tables
        embedding = sum(p.numel() for name, p in model.named_parameters() if name in tables)
        assert trial.n_params_non_embedding == trial.n_params - embedding


def test_ffn_necessity_covers_every_family_with_and_without_ffn():
    variants = {t.variant for t in study.load(STUDIES / "ffn_necessity.yaml").trials}
    families = {name.removesuffix("-no-ffn") for name in variants}
    assert families == {"mha", "aft", "hybrid", "hybrid-heads", "retnet", "retention"}
    assert variants == families | {f"{family}-no-ffn" for family in families}


@pytest.mark.parametrize(("name", "count"), [("strawberry_seed", 1_032_192), ("hybrid_ratio", 655_360)])
def test_shipped_studies_compare_at_one_parameter_count(name, count):
    """Equal but for mha's QK gains: one per head and layer (at most 24 here, 0.003%)."""
    counts = {t.n_params_non_embedding for t in study.load(STUDIES / f"{name}.yaml").trials}
    assert min(counts) == count and max(counts) <= count + 24


CHUNK = 5  # chunked mixers use chunks of 5 over a context of 36: the last chunk is short
TINY = {"vocab_size": 50, "context": 36, "d_model": 16, "n_layers": 2, "n_heads": 2, "qkv_dim": 16, "ffn_dim": 32}
OPTIONS = {
    "mha-window": ("mha", {"window": 5}),
    "mha-plain": ("mha", {"rope": False, "qk_norm": False}),
    "aft-qknorm": ("aft-simple", {"qk_norm": True}),
    "aft-local-window": ("aft-local", {"window": 3}),
    "retention-chunk": ("retention", {"scope": "chunk", "chunk_size": CHUNK, "recurrence": 3}),
    "retention-sequence": ("retention", {"scope": "sequence"}),
    "retention-batch": ("retention", {"scope": "batch"}),
    "retnet-parallel": ("retnet", {"form": "parallel"}),
    "retnet-recurrent": ("retnet", {"form": "recurrent"}),
    "retnet-chunkwise": ("retnet", {"form": "chunkwise", "chunk_size": CHUNK}),
    "hybrid-1to1": ("hybrid", {"pattern": ["aft-full", {"mha": {"window": 4}}]}),
    "hybrid-retention": ("hybrid", {"pattern": [{"retention": {"chunk_size": CHUNK}}, "retnet"]}),
    "hybrid-heads-1of2": ("hybrid-heads", {"aft_heads": 1, "window": 4}),
}


def _configs():
    for name in ablate.variants():
        for ffn in (True, False):
            yield pytest.param({"mixer": name, "ffn": ffn, **TINY}, id=f"{name}-ffn{int(ffn)}")
    for label, (name, options) in OPTIONS.items():
        yield pytest.param({"mixer": name, "mixer_options": options, **TINY}, id=label)


def _check_causal(model, idx):
    """Changing position t leaves every earlier logit, and every other sequence, where it was."""
    B, T = idx.shape
    vocab = model.cfg.vocab_size
    with torch.no_grad():
        logits = model(idx)
        # the first, middle and last position of a chunk, and the ends of the sequence
        for t in sorted({0, 1, CHUNK, CHUNK + CHUNK // 2, 2 * CHUNK - 1, T // 2, T - 1}):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % vocab
            diff = (model(changed) - logits).abs()
            assert t == 0 or diff[:, :t].max().item() <= 1e-5
            assert diff[:, t:].max().item() > 0  # the change is seen from t on
        other = idx.clone()
        other[1:] = torch.randint(0, vocab, (B - 1, T))
        assert (model(other)[0] - logits[0]).abs().max().item() <= 1e-5  # other sequences never leak in

    embeddings = {}

    def keep(module, inputs, output):
        output.retain_grad()
        embeddings["x"] = output

    hook = model.embed.register_forward_hook(keep)
    for t in (0, CHUNK - 1, CHUNK, T // 2, T - 2):
        model.zero_grad()
        model(idx)[0, t].sum().backward()
        grad = embeddings["x"].grad
        assert grad[0, t + 1 :].abs().max().item() == 0.0  # exactly zero towards the future
        assert grad[1:].abs().max().item() == 0.0
        assert grad[0, : t + 1].abs().max().item() > 0
    hook.remove()


def _train_a_little(model, steps=3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, model.cfg.vocab_size, (4, model.cfg.context + 1))
        loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("config", _configs())
def test_every_mixer_is_causal_unless_marked_otherwise(config):
    torch.manual_seed(0)
    model = ablate.build_model(config)
    if not model.causal:  # the mark must be true: it does leak
        assert not audit.is_causal(audit.max_leak(config))
        return
    idx = torch.randint(0, config["vocab_size"], (3, config["context"]))
    _check_causal(model, idx)
    _train_a_little(model)
    _check_causal(model, idx)


@pytest.mark.parametrize("config", _configs())
def test_gradients_reach_every_parameter(config):
    torch.manual_seed(0)
    model = ablate.build_model(config)
    model(torch.randint(0, config["vocab_size"], (2, config["context"]))).logsumexp(-1).mean().backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead


@pytest.mark.parametrize("n, vocab", [(300, 8192), (37, 300)], ids=["3-blocks", "1-block"])
def test_fused_loss_equals_cross_entropy_and_its_gradient(n, vocab):
    """The fused head + loss against logits formed whole, in float64: the value and both gradients.
    At vocab 8192 a block is 128 rows, so 300 rows run in three blocks, the last one short; every
    fifth target is ignored (as a task's unscored positions are)."""
    from ablate.nn.loss import IGNORE_INDEX, linear_cross_entropy

    assert (n > (1 << 20) // vocab) == (vocab == 8192)  # the first case really runs several blocks
    torch.manual_seed(0)
    h = torch.randn(n, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, 16, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, vocab, (n,))
    target[::5] = IGNORE_INDEX
    fused = linear_cross_entropy(h, w, target)
    (fused * 3).backward()  # a scaled upstream gradient reaches both inputs
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    plain = torch.nn.functional.cross_entropy(h @ w.T, target, ignore_index=IGNORE_INDEX)
    (plain * 3).backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(grads, (h.grad, w.grad))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, target), plain.detach())


def test_model_loss_is_the_cross_entropy_of_its_logits():
    model = ablate.build_model(
        {"mixer": "mha", "vocab_size": 64, "context": 16, "d_model": 16, "n_heads": 2, "qkv_dim": 16, "ffn_dim": 32}
    )
    idx, targets = torch.randint(0, 64, (3, 16)), torch.randint(0, 64, (3, 16))
    plain = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(model.loss(idx, targets), plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotary_turns_each_pair_to_the_last_bit(dtype):
    """The same numbers as the pairwise formula (x1·cos − x2·sin, x1·sin + x2·cos), bit for bit,
    with angles t·10000^(-2j/d), and the same gradient, bit for bit: runs recorded before the
    change reproduce after it."""
    from ablate.nn.layers import Rotary

    d, T = 8, 11
    x = torch.randn(2, 3, T, d, dtype=dtype, requires_grad=True)
    steps = torch.arange(0, d, 2, dtype=torch.float64)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), 10000.0 ** (-steps / d))
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    expected = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    got = Rotary(d, 16)(x)
    assert torch.equal(got, expected)
    g = torch.randn_like(got)
    (grad_got,) = torch.autograd.grad(got, x, g)
    (grad_expected,) = torch.autograd.grad(expected, x, g)
    assert torch.equal(grad_got, grad_expected)  # each gradient is a sum of the same two products


def test_rotary_past_its_table_turns_as_a_longer_table_would():
    """A decoder going on past the context gets the rows a table that long would hold."""
    from ablate.nn.layers import HalfSplitRotary, Rotary

    for kind in (Rotary, HalfSplitRotary):
        x = torch.randn(1, 2, 5, 8, dtype=torch.float64)
        short, long = kind(8, 16), kind(8, 64)
        assert torch.equal(short(x, start=30), long(x, start=30))
        assert short.cos.size(0) == 70 and torch.equal(short(x, start=2), long(x, start=2))


@pytest.mark.parametrize("window", [1, 5, 16])
def test_windowed_attention_block_by_block_is_the_masked_attention(window):
    from ablate.nn.layers import causal_mask, windowed_blocks

    q, k, v = torch.randn(3, 2, 3, 150, 8, dtype=torch.float64)
    masked = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(150, window, None))
    torch.testing.assert_close(windowed_blocks(q, k, v, window, 0.0), masked, rtol=0, atol=1e-12)


V, C, D, H, T, L, F = 50, 16, 24, 2, 12, 2, 32  # vocab, d_model, qkv_dim, heads, context, layers, ffn_dim
PROJECTIONS = 3 * C * D + D * C  # q, k, v in, one out
CLOSED_FORM = {  # parameters per block's mixer, from the mixers' definitions (norms carry no weights)
    "mha": ("mha", {}, PROJECTIONS + H),  # + a QK gain per head
    "mha-no-qk-norm": ("mha", {"qk_norm": False}, PROJECTIONS),
    "aft-simple": ("aft-simple", {}, PROJECTIONS),
    "aft-full": ("aft-full", {}, PROJECTIONS + T * (T + 1) // 2),  # a bias for every pair t' ≤ t
    "aft-local": ("aft-local", {"window": 4}, PROJECTIONS + sum(min(t + 1, 4) for t in range(T))),
    "retnet": ("retnet", {}, PROJECTIONS + C * D),  # + the gate
}


@pytest.mark.parametrize("ffn_type", ["swiglu", "gelu"])
@pytest.mark.parametrize("name", CLOSED_FORM)
def test_parameter_counts_match_the_closed_form(name, ffn_type):
    """Counted from the formulas, not from a model built the way `plan` builds it."""
    mixer, options, per_mixer = CLOSED_FORM[name]
    ffn = (3 if ffn_type == "swiglu" else 2) * C * F
    config = {"mixer": mixer, "mixer_options": options, "vocab_size": V, "context": T, "d_model": C}
    config |= {"qkv_dim": D, "n_heads": H, "n_layers": L, "ffn_dim": F, "ffn_type": ffn_type}
    model = ablate.build_model(config, device="meta")
    assert model.n_params(non_embedding=True) == L * (per_mixer + ffn)
    assert model.n_params() == V * C + L * (per_mixer + ffn)  # the embedding is tied to the output

"""Effective rank and attention entropy against their definitions; gradient metrics from the Trainer."""

import math

import pytest
import torch

import ablate
from ablate.core.config import TrainConfig
from ablate.nn.layers import rms_norm
from ablate.train.diagnostics import attention_entropy, effective_rank, per_block
from ablate.train.trainer import Trainer, seed_everything

MODEL = {"mixer": "mha", "vocab_size": 512, "context": 48, "d_model": 32, "n_layers": 1, "n_heads": 2, "qkv_dim": 32}
TRAIN = {"batch_size": 8, "warmup": 5, "eval_batches": 2}


def test_effective_rank_of_an_identity_like_representation_is_its_dimension():
    d = 12
    eye = torch.eye(d)
    assert effective_rank(torch.cat([eye, -eye])) == pytest.approx(d)  # centered already: d equal singular values
    rotated = torch.cat([eye, -eye]) @ torch.linalg.qr(torch.randn(d, d)).Q * 5.0
    assert effective_rank(rotated) == pytest.approx(d)  # rotation and scale do not change it


def test_effective_rank_of_a_rank_one_representation_is_one():
    u, v, offset = (torch.randn(*shape, dtype=torch.float64) for shape in ((300, 1), (1, 16), (1, 16)))
    assert effective_rank(u @ v + offset) == pytest.approx(1.0)  # a shared offset is centered away


def test_effective_rank_matches_the_entropy_of_its_singular_values():
    torch.manual_seed(0)
    h = torch.randn(50, 6) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.1])
    s = torch.linalg.svdvals((h - h.mean(0)).double())
    p = s / s.sum()
    assert effective_rank(h) == pytest.approx(math.exp(-(p * p.log()).sum().item()))


def test_attention_entropy_of_uniform_causal_attention_is_the_mean_log_of_keys_seen():
    T = 10
    probs = torch.ones(T, T).tril()
    probs = (probs / probs.sum(-1, keepdim=True))[None, None].expand(2, 3, T, T)
    assert attention_entropy(probs) == pytest.approx(sum(math.log(t + 1) for t in range(T)) / T)
    assert attention_entropy(torch.eye(T)[None, None]) == pytest.approx(0.0)


def test_mha_attention_map_is_what_it_applies():
    model = ablate.build_model({**MODEL, "mixer_options": {"window": 5}})
    mixer, x = model.blocks[0].mixer, torch.randn(2, 48, MODEL["d_model"])
    probs = mixer.attention_probs(x)
    _, _, v = mixer.heads(x)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, MODEL["n_heads"], 48))
    assert probs[..., 0, 1:].abs().max() == 0 and probs[..., 10, :6].abs().max() == 0  # causal, window 5
    y = (probs @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(mixer.out(y), mixer(x), atol=1e-5, rtol=1e-5)


def test_per_block_reports_rank_for_every_block_and_entropy_where_there_is_attention():
    model = ablate.build_model(
        {**MODEL, "mixer": "hybrid", "n_layers": 2, "mixer_options": {"pattern": ["aft-simple", "mha"]}}
    )
    out = per_block(model, torch.randint(0, 512, (4, 48)))
    assert sorted(out) == ["attn_entropy/block1", "rank/block0", "rank/block1"]
    assert 1 <= out["rank/block0"] <= MODEL["d_model"] and 0 < out["attn_entropy/block1"] <= math.log(48)


def test_per_block_measures_the_stream_each_block_receives_in_the_models_own_forward():
    """Forward hooks record what each block really gets and gives when the model runs; with the
    embedding norm on, a walk that skipped it would measure other numbers (the embedding here is
    scaled far from unit RMS, so that norming it matters)."""
    model = ablate.build_model({**MODEL, "n_layers": 2, "embed_norm": True})
    with torch.no_grad():
        model.embed.weight.mul_(40.0)
    seen = {}
    hooks = [
        block.register_forward_hook(lambda _, args, out, i=i: seen.__setitem__(i, (args[0], out)))
        for i, block in enumerate(model.blocks)
    ]
    idx = torch.randint(0, 512, (4, 48))
    model(idx)
    for hook in hooks:
        hook.remove()
    out = per_block(model, idx)
    for i, (x_in, x_out) in seen.items():
        assert out[f"rank/block{i}"] == pytest.approx(effective_rank(x_out.flatten(0, 1)))
        probs = model.blocks[i].mixer.attention_probs(rms_norm(x_in))
        assert out[f"attn_entropy/block{i}"] == pytest.approx(attention_entropy(probs))
    skipped_norm = effective_rank(model.blocks[0](model.embed(idx)).flatten(0, 1))
    assert skipped_norm != pytest.approx(out["rank/block0"])


def test_trainer_logs_gradient_norms_per_block_and_the_clipped_fraction(corpus):
    seed_everything(0)
    events = []
    cfg = TrainConfig(**{**TRAIN, "steps": 20, "eval_every": 20, "log_every": 5, "grad_clip": 1e-6})
    trainer = Trainer(ablate.build_model({**MODEL, "n_layers": 2}), corpus, cfg, 0)
    trainer.fit(lambda step, metrics, kind: events.append((kind, metrics)))
    logs = [m for kind, m in events if kind == "log"]
    assert all(m["clipped_fraction"] == 1.0 for m in logs)  # every step is clipped at 1e-6
    for m in logs:
        blocks = [m["grad_norm/block0"], m["grad_norm/block1"]]
        assert 0 < max(blocks) and math.sqrt(sum(b * b for b in blocks)) <= m["grad_norm"] + 1e-6
    (evaluated,) = [m for kind, m in events if kind == "eval"]
    assert {"rank/block0", "rank/block1", "attn_entropy/block0", "attn_entropy/block1"} <= set(evaluated)

    cfg = TrainConfig(**{**TRAIN, "steps": 10, "eval_every": 10, "log_every": 5, "grad_clip": 1e6})
    events.clear()
    Trainer(ablate.build_model(MODEL), corpus, cfg, 0).fit(lambda step, metrics, kind: events.append((kind, metrics)))
    assert all(m["clipped_fraction"] == 0.0 for kind, m in events if kind == "log")


def test_without_clipping_the_gradient_norm_is_still_logged(corpus):
    seed_everything(0)
    events = []
    cfg = TrainConfig(**{**TRAIN, "steps": 10, "eval_every": 10, "log_every": 5, "grad_clip": None})
    Trainer(ablate.build_model(MODEL), corpus, cfg, 0).fit(lambda step, metrics, kind: events.append((kind, metrics)))
    for m in (m for kind, m in events if kind == "log"):
        assert m["clipped_fraction"] == 0.0 and 0 < m["grad_norm/block0"] <= m["grad_norm"] + 1e-6

"""The shared trainer: schedule, learning, determinism."""

import math

import pytest
import torch
from torch import nn

import ablate
from ablate.core.config import TrainConfig
from ablate.mixers.registry import Mixer, mixer_class, register
from ablate.train.optimizers import lr_factor
from ablate.train.trainer import Trainer, seed_everything

MODEL = {
    "mixer": "mha",
    "vocab_size": 512,
    "context": 48,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "qkv_dim": 32,
    "ffn_dim": 64,
}
TRAIN = {"steps": 40, "batch_size": 8, "warmup": 5, "eval_every": 20, "eval_batches": 2, "log_every": 5}


@register("test-peek-next")
class PeekNext(Mixer):
    """Test only: position t sees the token at t + 1, the crudest leak there is."""

    causal = False

    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1))


def _fit(corpus, seed, model=MODEL, prefix_eval=False, **train):
    seed_everything(seed)
    events = []
    trainer = Trainer(ablate.build_model(model), corpus, TrainConfig(**{**TRAIN, **train}), seed, prefix_eval)
    final = trainer.fit(lambda step, metrics, kind: events.append((step, kind, metrics)))
    return final, events


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.55)
    assert lr_factor(100, cfg) == pytest.approx(0.1)


def test_training_learns_and_reports_through_the_callback(corpus):
    """The untrained model's val loss comes first (step 0): about ln V + ½, since the seed's
    initialisation gives logits of standard deviation about 1."""
    final, events = _fit(corpus, 0, steps=120, eval_every=60)
    assert [(s, k) for s, k, _ in events if k == "start"] == [(0, "start")]
    start = events[0][2]
    assert math.log(512) < start["val_loss"] < math.log(512) + 0.8
    assert final["val_loss"] < start["val_loss"] - 1.0
    assert [s for s, k, _ in events if k == "eval"] == [60, 120]
    assert [s for s, k, _ in events if k == "log"] == list(range(5, 121, 5))


def test_the_wsd_schedule_holds_the_rate_then_cools_down_over_its_share():
    cfg = TrainConfig(steps=100, warmup=10, schedule="wsd", cooldown_frac=0.4, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == lr_factor(60, cfg) == 1.0
    assert lr_factor(80, cfg) == pytest.approx(0.55)  # halfway through the cosine cooldown over steps 60..100
    assert lr_factor(100, cfg) == pytest.approx(0.1)


def _first_step(corpus, **train):
    """The weights before and after the trainer's first step, and the gradient of that step's loss."""
    cfg = TrainConfig(**{**TRAIN, "warmup": 0, "grad_clip": None, "lr": 0.01, "weight_decay": 0.1, **train})
    seed_everything(0)
    model = ablate.build_model(MODEL)
    trainer = Trainer(model, corpus, cfg, seed=0)
    x, y = next(corpus.batches(MODEL["context"], cfg.batch_size, 0))  # the batch the trainer draws first
    names = [n for n, _ in model.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(model.loss(x, y), list(model.parameters()))))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train_step()
    return before, grads, dict(model.named_parameters()), cfg


def _adamw_first_step(p, g, lr, decay, eps):
    """AdamW's first step: the bias-corrected moments are g and g², so the step is g / (|g| + eps)."""
    return p * (1 - lr * decay) - lr * g / (g.abs() + eps)


def _newton_schulz(g, steps=5):
    """Muon's orthogonalisation, in float64: Frobenius-normed, then the quintic iteration on the wide form."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double().T if g.size(0) > g.size(1) else g.double()
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.size(0) > g.size(1) else x


def test_one_adamw_step_is_the_hand_computed_one(corpus):
    before, grads, after, cfg = _first_step(corpus)
    for name, p in after.items():
        decay = cfg.weight_decay if p.dim() >= 2 else 0.0
        expected = _adamw_first_step(before[name], grads[name], cfg.lr, decay, cfg.eps)
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=0)


def test_one_muon_step_is_the_hand_computed_one(corpus):
    """The blocks' matrices take Muon's step: momentum g, Nesterov (1 + μ)·g, orthogonalised,
    scaled by √max(1, rows/cols), with decoupled weight decay (torch runs the iteration in
    bfloat16, hence the tolerance); the embedding and the gains keep AdamW's."""
    before, grads, after, cfg = _first_step(corpus, optimizer="muon")
    muon = [n for n in after if n.startswith("blocks.") and after[n].dim() == 2]
    assert muon and "embed.weight" not in muon
    for name, p in after.items():
        if name in muon:
            rows, cols = p.shape
            update = _newton_schulz((1 + cfg.muon_momentum) * grads[name]).float()
            expected = before[name] * (1 - cfg.lr * cfg.weight_decay) - cfg.lr * max(1, rows / cols) ** 0.5 * update
            torch.testing.assert_close(p.detach(), expected, atol=cfg.lr * 0.02, rtol=0)
            assert (p.detach() - expected).abs().max() < 0.1 * (p.detach() - before[name]).abs().max()
        else:
            decay = cfg.weight_decay if p.dim() >= 2 else 0.0
            expected = _adamw_first_step(before[name], grads[name], cfg.lr, decay, cfg.eps)
            torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=0)


def test_one_seed_gives_the_same_loss_twice(corpus):
    a, _ = _fit(corpus, 7)
    b, _ = _fit(corpus, 7)
    c, _ = _fit(corpus, 8)
    assert a["val_loss"] == b["val_loss"] and a["train_loss"] == b["train_loss"]
    assert a["val_loss"] != c["val_loss"]


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(steps=10, warmup=20)


SHIPPED = [name for name in ablate.variants() if mixer_class(name).__module__.startswith("ablate.architectures.")]


@pytest.mark.slow
@pytest.mark.parametrize("mixer", SHIPPED)  # not the test-only mixers some test modules register
def test_compiled_training_gives_the_eager_loss(corpus, mixer):
    model = {**MODEL, "mixer": mixer}
    eager, _ = _fit(corpus, 0, model=model, steps=10, eval_every=10)
    compiled, _ = _fit(corpus, 0, model=model, steps=10, eval_every=10, compile=True)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], abs=1e-5)


def test_prefix_loss_equals_the_teacher_forced_loss_for_a_causal_model_only(corpus):
    causal, _ = _fit(corpus, 0, steps=20, eval_every=20, prefix_eval=True)
    assert causal["prefix_val_loss"] == pytest.approx(causal["val_loss_at_prefix_positions"], abs=1e-4)
    leaky, events = _fit(
        corpus, 0, model={**MODEL, "mixer": "test-peek-next"}, steps=20, eval_every=10, prefix_eval=True
    )
    assert leaky["val_loss_at_prefix_positions"] < leaky["prefix_val_loss"] - 0.3  # it learns to read the answer
    assert [sorted(key for key in m if "/" not in key) for s, k, m in events if k == "eval"] == [  # not per block
        ["val_accuracy", "val_loss"],
        ["prefix_val_loss", "val_accuracy", "val_loss", "val_loss_at_prefix_positions"],
    ]


def test_one_seed_pairs_every_variant_on_the_same_batches(corpus):
    """Runs with one seed are paired: whatever the model, the same sequences in the same order."""
    seen = []
    for mixer in ("mha", "aft-simple"):
        seed_everything(3)
        model = ablate.build_model({**MODEL, "mixer": mixer})
        trainer = Trainer(model, corpus, TrainConfig(**TRAIN), seed=3)
        seen.append([next(trainer.batches)[0] for _ in range(5)])
    assert all(torch.equal(a, b) for a, b in zip(*seen))
    seed_everything(4)
    other = Trainer(ablate.build_model(MODEL), corpus, TrainConfig(**TRAIN), seed=4)
    assert not torch.equal(next(other.batches)[0], seen[0][0])

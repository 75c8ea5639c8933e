"""moa, the mixture of attention experts: its routing, its Switch load-balancing loss, and the
trainer's use of that loss."""

import pytest
import torch

import ablate
from ablate.core.config import TrainConfig
from ablate.core.errors import AblateError
from ablate.core.schema import Metric
from ablate.train.trainer import Trainer, seed_everything

SHAPE = {"vocab_size": 64, "context": 32, "d_model": 16, "n_layers": 1, "n_heads": 2, "qkv_dim": 16}
EXPERTS = [{"mha": {"window": 4}}, "aft-simple", "linear-attn"]


def _moa(**options):
    torch.manual_seed(0)
    model = ablate.build_model({**SHAPE, "mixer": "moa", "mixer_options": {"experts": EXPERTS, **options}})
    return model.blocks[0].mixer


@pytest.mark.parametrize("top_k", [1, 2])
def test_each_token_takes_its_top_k_experts_weighted_by_the_router(top_k):
    moa = _moa(top_k=top_k)
    x = torch.randn(3, 32, 16)
    with torch.no_grad():
        probs = torch.softmax(x @ moa.router.weight.T, -1)
        outputs = [expert(x) for expert in moa.experts]
        expected = torch.zeros_like(x)
        for b in range(3):
            for t in range(32):
                for e in probs[b, t].argsort(descending=True)[:top_k].tolist():
                    expected[b, t] += probs[b, t, e] * outputs[e][b, t]
        torch.testing.assert_close(moa(x), expected, rtol=1e-5, atol=1e-6)


def test_the_load_balancing_loss_is_switch_transformers():
    """aux = α·E·Σ_e f_e·P_e, f_e the share of routing choices sent to e, P_e its mean probability."""
    moa = _moa(top_k=2, aux_weight=0.3).train()
    x = torch.randn(4, 32, 16)
    moa(x)
    probs = torch.softmax(x @ moa.router.weight.T, -1).reshape(-1, 3)
    picked = probs.topk(2, -1).indices
    share = torch.stack([(picked == e).any(-1).float().mean() / 2 for e in range(3)])
    expected = 0.3 * 3 * (share * probs.mean(0)).sum()
    torch.testing.assert_close(moa.aux_loss, expected)
    moa.eval()
    moa.aux_loss = None
    moa(x)
    assert moa.aux_loss is None  # evaluation adds nothing


def test_minimising_the_load_balancing_loss_spreads_the_tokens():
    """A router that sends every token to one expert is pushed back to an even load (α·1 is the minimum)."""
    moa = _moa(top_k=1, aux_weight=1.0).train()
    with torch.no_grad():
        moa.router.weight.zero_()
        moa.router.weight[0] = 1.0  # expert 0 wins for most tokens
    x = torch.randn(16, 32, 16) + 0.5
    optimizer = torch.optim.SGD(moa.router.parameters(), lr=0.5)

    def load() -> torch.Tensor:
        with torch.no_grad():
            picked = (x @ moa.router.weight.T).argmax(-1)
        return torch.bincount(picked.flatten(), minlength=3) / picked.numel()

    assert load().max() > 0.9
    for _ in range(300):
        moa(x)
        optimizer.zero_grad()
        moa.aux_loss.backward()
        optimizer.step()
    assert load().max() < 0.5
    assert moa.aux_loss.item() == pytest.approx(1.0, abs=0.1)


def test_the_trainer_adds_the_auxiliary_loss_and_logs_it(corpus):
    """train_loss stays the cross-entropy that every variant reports; train_aux_loss sits beside
    it; and the router learns from the balance term (its gradient differs with α)."""
    model = {**SHAPE, "vocab_size": 512, "context": 48, "mixer": "moa"}
    train = TrainConfig(steps=10, batch_size=4, warmup=2, eval_every=10, eval_batches=1, log_every=5)
    grads, logged = [], []
    for aux_weight in (0.0, 10.0):
        seed_everything(0)
        trainer = Trainer(ablate.build_model(model | {"mixer_options": {"aux_weight": aux_weight}}), corpus, train, 0)
        trainer.fit(lambda step, metrics, kind: logged.append(metrics) if kind == "log" else None)
        trainer.train_step()
        grads.append(trainer.model.blocks[0].mixer.router.weight.grad.clone())
    assert all(Metric.TRAIN_AUX_LOSS in m for m in logged)
    assert logged[0][Metric.TRAIN_AUX_LOSS] == 0.0 and logged[-1][Metric.TRAIN_AUX_LOSS] >= 10.0 - 1e-4
    assert not torch.allclose(grads[0], grads[1])
    seed_everything(0)
    plain = Trainer(ablate.build_model({**model, "mixer": "mha"}), corpus, train, 0)
    assert Metric.TRAIN_AUX_LOSS not in plain.fit()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"experts": ["mha"]}, "moa experts must be a list of at least 2 mixers"),
        ({"experts": ["mha", "moa"]}, "moa experts are single mixers, not moa"),
        ({"experts": ["mha", {"aft-simple": {"windw": 3}}]}, "has no option 'windw'"),
        ({"top_k": 3, "experts": ["mha", "aft-simple"]}, "moa top_k 3 is more than its 2 experts"),
        ({"aux_weight": -1.0}, "moa aux_weight must be ≥ 0"),
    ],
)
def test_a_wrong_mixture_is_one_line(options, message):
    with pytest.raises(AblateError, match=message):
        ablate.build_model({**SHAPE, "mixer": "moa", "mixer_options": options})

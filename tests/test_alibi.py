"""`pos: alibi` (Press et al. 2022): each head's scores get −m·(t − t′), m its slope. The slopes and
the attention equal a hand computation; mha keeps the mixer contract with it (causal, decoding
from its state, FLOPs, buffers); the mixers whose attention does not take it yet say so."""

import math

import pytest
import torch

import ablate
from ablate.core.errors import AblateError
from ablate.nn.layers import alibi_slopes
from tests.test_mixer_contract import SHAPE, violations


def test_the_slopes_are_the_papers():
    assert alibi_slopes(8).tolist() == [2**-k for k in range(1, 9)]
    assert alibi_slopes(4).tolist() == [2**-2, 2**-4, 2**-6, 2**-8]
    # not a power of two: the four of 4 heads, then every other one of 8 heads' (2^-1, 2^-3)
    assert alibi_slopes(6).tolist() == [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]


@pytest.mark.parametrize("window", [None, 5])
def test_mha_with_alibi_attends_as_the_formula_says(window):
    torch.manual_seed(0)
    config = {"vocab_size": 50, "context": 48, "d_model": 16, "n_layers": 1, "n_heads": 4, "qkv_dim": 16}
    mixer = ablate.build_model({**config, "mixer": "mha", "pos": "alibi", "mixer_options": {"window": window}})
    mixer = mixer.double().blocks[0].mixer
    x = torch.randn(2, 48, 16, dtype=torch.float64)
    q, k, v = mixer.heads(x)
    T, m = 48, [2**-2, 2**-4, 2**-6, 2**-8]
    y = torch.zeros_like(q)
    for h in range(4):
        for t in range(T):
            seen = [s for s in range(t + 1) if window is None or t - s < window]
            scores = torch.stack([(q[:, h, t] * k[:, h, s]).sum(-1) / math.sqrt(4) - m[h] * (t - s) for s in seen], -1)
            weights = torch.softmax(scores, dim=-1)
            y[:, h, t] = (weights[..., None] * torch.stack([v[:, h, s] for s in seen], dim=1)).sum(1)
    assert torch.allclose(mixer(x), mixer.output(y), atol=1e-12)


@pytest.mark.parametrize(
    "name, options", [("mha", {}), ("mha", {"window": 16}), ("based", {}), ("hybrid-heads", {}), ("hybrid", {})]
)
def test_the_softmax_mixers_with_alibi_meet_the_contract(name, options):
    assert violations(name, options, backbone={"pos": "alibi"}) == []


def test_alibi_reaches_every_softmax_head_and_retention_refuses_it():
    torch.manual_seed(0)
    model = ablate.build_model({**SHAPE, "mixer": "hybrid-heads", "pos": "alibi", "mixer_options": {"aft_heads": 1}})
    assert model.blocks[0].mixer.alibi.slopes.tolist() == [2**-8]  # its one attention head
    with pytest.raises(AblateError, match="pos alibi applies in the softmax attention of mha, hybrid-heads and based"):
        ablate.build_model({**SHAPE, "mixer": "retention", "pos": "alibi"})

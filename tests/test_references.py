"""Mixers against references written here from their formulas, position by position in float64
(not by calling the module's own helpers): mha with each of its options, and AFT with a learned
bias that is not zero."""

import math

import pytest
import torch

import ablate

T, C, D, H = 7, 12, 8, 2  # context, d_model, qkv_dim, heads
d = D // H
CONFIG = {"vocab_size": 20, "context": T, "d_model": C, "qkv_dim": D, "n_heads": H, "n_layers": 1}


def mixer(name: str, **options):
    torch.manual_seed(0)
    model = ablate.build_model({**CONFIG, "mixer": name, "mixer_options": options}).double()
    return model.blocks[0].mixer


def rotate(vec: torch.Tensor, t: int) -> torch.Tensor:
    """Each pair (x_2j, x_2j+1) turned by the angle t·10000^(−2j/d)."""
    out = vec.clone()
    for j in range(d // 2):
        angle = t * 10000.0 ** (-2 * j / d)
        a, b = vec[2 * j], vec[2 * j + 1]
        out[2 * j], out[2 * j + 1] = (
            a * math.cos(angle) - b * math.sin(angle),
            a * math.sin(angle) + b * math.cos(angle),
        )
    return out


def rms(vec: torch.Tensor) -> torch.Tensor:
    return vec / torch.sqrt((vec**2).mean() + torch.finfo(torch.float64).eps)


def mha_reference(m, x: torch.Tensor, window: int | None, rope: bool, qk_norm: bool) -> torch.Tensor:
    w = m.qkv.weight  # rows: all q (head by head), then all k, then all v
    y = torch.zeros(T, D, dtype=torch.float64)
    for h in range(H):
        rows = slice(h * d, (h + 1) * d)
        q = [w[0:D][rows] @ x[t] for t in range(T)]
        k = [w[D : 2 * D][rows] @ x[t] for t in range(T)]
        v = [w[2 * D : 3 * D][rows] @ x[t] for t in range(T)]
        if rope:
            q, k = [rotate(q[t], t) for t in range(T)], [rotate(k[t], t) for t in range(T)]
        if qk_norm:
            q, k = [rms(q[t]) * m.qk_gain[h] for t in range(T)], [rms(k[t]) for t in range(T)]
        for t in range(T):
            seen = [s for s in range(T) if s <= t and t - s < (window or T)]
            scores = torch.stack([q[t] @ k[s] / math.sqrt(d) for s in seen])
            p = torch.softmax(scores, dim=0)
            y[t, rows] = sum(p[i] * v[s] for i, s in enumerate(seen))
    return y @ m.out.weight.T


@pytest.mark.parametrize(
    "options",
    [{}, {"window": 3}, {"rope": False}, {"qk_norm": False}, {"window": 2, "rope": False, "qk_norm": False}],
    ids=["default", "window", "no-rope", "no-qk-norm", "plain-window"],
)
def test_mha_matches_its_formula(options):
    m = mixer("mha", **options)
    if m.qk_gain is not None:
        with torch.no_grad():
            m.qk_gain.copy_(torch.tensor([0.7, 1.9]))  # gains that are not 1, so that they count
    x = torch.randn(1, T, C, dtype=torch.float64)
    full = {"window": None, "rope": True, "qk_norm": True} | options
    torch.testing.assert_close(m(x)[0], mha_reference(m, x[0], **full), atol=1e-10, rtol=0)


def aft_reference(m, x: torch.Tensor, window: int | None) -> torch.Tensor:
    """y_t = σ(q_t) ⊙ Σ_{t'≤t} exp(k_t' + w_{t,t'}) v_t' / Σ_{t'≤t} exp(k_t' + w_{t,t'}); the learned
    biases are stored row by row over the pairs t − window < t' ≤ t, and are 0 outside them."""
    q, k, v = (x @ m.qkv.weight.T).split(D, dim=-1)
    bias, index = {}, 0
    for t in range(T):
        for s in range(T):
            if s <= t and t - s < (window or T):
                bias[t, s], index = m.bias[index], index + 1
    assert index == m.bias.numel()
    y = torch.zeros(T, D, dtype=torch.float64)
    for t in range(T):
        weights = [torch.exp(k[s] + bias.get((t, s), 0.0)) for s in range(t + 1)]
        y[t] = torch.sigmoid(q[t]) * sum(w * v[s] for s, w in enumerate(weights)) / sum(weights)
    return y @ m.out.weight.T


@pytest.mark.parametrize(("name", "window"), [("aft-full", None), ("aft-local", 3)])
def test_aft_with_a_learned_bias_matches_its_formula(name, window):
    m = mixer(name, **({"window": window} if window else {}))
    with torch.no_grad():
        m.bias.copy_(torch.randn(m.bias.shape, dtype=torch.float64) * 2)  # far from the zero it starts at
    x = torch.randn(1, T, C, dtype=torch.float64)
    torch.testing.assert_close(m(x)[0], aft_reference(m, x[0], window), atol=1e-10, rtol=0)

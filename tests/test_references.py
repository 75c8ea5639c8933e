"""Mixers against references written here from their formulas, position by position in float64
(not by calling the module's own helpers): mha with each of its options, AFT with a learned bias
that is not zero, the two hybrids, and retnet's whole layer (rotary, scaling, decay, group norm,
gate) in each of its three forms."""

import math

import pytest
import torch

import ablate

T, C, D, H = 7, 12, 8, 2  # context, d_model, qkv_dim, heads
d = D // H
CONFIG = {"vocab_size": 20, "context": T, "d_model": C, "qkv_dim": D, "n_heads": H, "n_layers": 1}


def mixer(name: str, layer: int = 0, **options):
    torch.manual_seed(0)
    model = ablate.build_model({**CONFIG, "n_layers": layer + 1, "mixer": name, "mixer_options": options})
    return model.double().blocks[layer].mixer


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


def causal_mean(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """aft-simple per channel: σ(q_t) ⊙ Σ_{s≤t} exp(k_s) v_s / Σ_{s≤t} exp(k_s)."""
    return torch.stack(
        [
            torch.sigmoid(q[t]) * sum(torch.exp(k[s]) * v[s] for s in range(t + 1)) / sum(torch.exp(k[: t + 1]))
            for t in range(T)
        ]
    )


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_hybrid_runs_the_mixer_its_pattern_names_for_each_layer(layer):
    """pattern [aft-simple, mha(window 2)]: layers 0 and 2 are AFT, layer 1 windowed attention."""
    m = mixer("hybrid", layer, pattern=["aft-simple", {"mha": {"window": 2}}])
    x = torch.randn(1, T, C, dtype=torch.float64)
    inner = m.mixer
    if layer % 2 == 0:
        q, k, v = (x[0] @ inner.qkv.weight.T).split(D, dim=-1)
        expected = causal_mean(q, k, v) @ inner.out.weight.T
    else:
        expected = mha_reference(inner, x[0], window=2, rope=True, qk_norm=True)
    torch.testing.assert_close(m(x)[0], expected, atol=1e-10, rtol=0)


def test_hybrid_heads_concatenates_aft_heads_and_windowed_attention_heads():
    """Head 0 runs aft-simple on its channels; head 1 rotary, RMS-normed q and k (no gain), softmax
    attention over the last `window` positions; the two outputs side by side, then the output map."""
    window = 3
    m = mixer("hybrid-heads", aft_heads=1, window=window)
    x = torch.randn(1, T, C, dtype=torch.float64)
    q, k, v = (x[0] @ m.qkv.weight.T).split(D, dim=-1)
    aft = causal_mean(q[:, :d], k[:, :d], v[:, :d])
    qa = [rms(rotate(q[t, d:], t)) for t in range(T)]
    ka = [rms(rotate(k[t, d:], t)) for t in range(T)]
    attention = torch.zeros(T, d, dtype=torch.float64)
    for t in range(T):
        seen = [s for s in range(max(0, t - window + 1), t + 1)]
        p = torch.softmax(torch.stack([qa[t] @ ka[s] / math.sqrt(d) for s in seen]), dim=0)
        attention[t] = sum(p[i] * v[s, d:] for i, s in enumerate(seen))
    expected = torch.cat([aft, attention], dim=-1) @ m.out.weight.T
    torch.testing.assert_close(m(x)[0], expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("form", ["parallel", "chunkwise", "recurrent"])
def test_retnet_layer_matches_its_formula(form):
    """Per head h, γ = 1 − 2^(−5−h): y_n = Σ_{m≤n} γ^(n−m) (rot(q_n) · rot(k_m)/√d) v_m, normalised per
    head to zero mean and unit variance (ε 1e-5), times swish(x W_gate) channel by channel, then
    the output map. chunk_size 3 makes the chunkwise form carry its state across chunks."""
    m = mixer("retnet", form=form, chunk_size=3)
    x = torch.randn(1, T, C, dtype=torch.float64)
    q, k, v = (x[0] @ m.qkv.weight.T).split(D, dim=-1)
    y = torch.zeros(T, D, dtype=torch.float64)
    for h in range(H):
        gamma, cols = 1 - 2.0 ** (-5 - h), slice(h * d, (h + 1) * d)
        for n in range(T):
            qn = rotate(q[n, cols], n)
            out = sum(gamma ** (n - s) * (qn @ rotate(k[s, cols], s) / math.sqrt(d)) * v[s, cols] for s in range(n + 1))
            y[n, cols] = (out - out.mean()) / torch.sqrt(out.var(unbiased=False) + 1e-5)
    gate = x[0] @ m.gate.weight.T
    expected = (gate * torch.sigmoid(gate) * y) @ m.out.weight.T
    torch.testing.assert_close(m(x)[0], expected, atol=1e-10, rtol=0)

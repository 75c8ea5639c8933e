"""retention against a slow reference written from the spec's equations, position by position, in float64."""

import math

import pytest
import torch

import ablate
from ablate.errors import AblateError
from ablate.layers import rms_norm

C, D, H, T, CHUNK = 8, 12, 2, 13, 4  # T is not a multiple of CHUNK


def _rms(v):
    return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-6)


def _silu(z):
    return z * torch.sigmoid(z)


def _rescale(w):
    return w if not w.any() else w / (w.std() * math.sqrt(w.shape[1]))


def _heads_rms(v):
    return torch.cat([_rms(part) for part in v.split(D // H)])


def _rotate(v, t):
    """Rotary on one head vector at position t: pairs (2j, 2j+1) turned by t·10000^(-2j/d)."""
    d, out = v.numel(), v.clone()
    for j in range(d // 2):
        angle = t * 10000.0 ** (-2 * j / d)
        c, s = math.cos(angle), math.sin(angle)
        out[2 * j], out[2 * j + 1] = v[2 * j] * c - v[2 * j + 1] * s, v[2 * j] * s + v[2 * j + 1] * c
    return out


def _output_map(y, w):
    if len(w) == 2:  # without FFN: a plain linear output projection
        return w[1] @ y
    z = w[1] @ y
    return w[2] @ (z[:C] * _silu(z[C:]))


def reference(mixer, x, scope, recurrence):
    """The spec's retention block, one position at a time; x is the raw residual stream."""
    B = x.shape[0]
    ffn = mixer.sw is not None
    static = [mixer.qkv.weight, mixer.sw.weight, mixer.out.weight] if ffn else [mixer.qkv.weight, mixer.out.weight]
    W_oa, W_t = mixer.produce.weight.T, mixer.transform
    o = [[_rms(_rms(x[b, t]) @ W_oa[:, :C]) for t in range(T)] for b in range(B)]
    a = [[_rms(_rms(x[b, t]) @ W_oa[:, C:]) for t in range(T)] for b in range(B)]

    def generated(b, t):
        if scope == "batch":
            positions = [(i, s) for i in range(B) for s in range(T)]
        elif scope == "sequence":
            positions = [(b, s) for s in range(T)]
        else:
            positions = [(b, s) for s in range(t // CHUNK * CHUNK)]
        if scope == "chunk" and not positions:
            G = torch.zeros(W_t.shape[1], C, dtype=x.dtype)
        else:
            summed = sum(torch.outer(o[i][s], a[i][s]) for i, s in positions)
            if scope == "chunk":
                summed = summed / len(positions)
            G = (torch.softmax(summed / math.sqrt(C), dim=-1) @ W_t).T
        if ffn:
            parts = [G[: 3 * D], G[3 * D : 5 * D].reshape(2 * C, D), G[5 * D :]]
        else:
            parts = [G[: 3 * D], G[3 * D :].reshape(C, D)]
        return [_rescale(p) for p in parts]

    transform = [[generated(b, t) for t in range(T)] for b in range(B)]
    current = [[list(static) for _ in range(T)] for _ in range(B)]
    x = x.clone()
    for _ in range(recurrence):
        h = [[_rms(x[b, t]) for t in range(T)] for b in range(B)]
        out = torch.zeros_like(x)
        for b in range(B):
            qkv = [current[b][t][0] @ h[b][t] for t in range(T)]
            for t in range(T):
                q = _heads_rms(qkv[t][:D])
                keys = torch.stack([_heads_rms(qkv[s][D : 2 * D]) for s in range(t + 1)])
                values = torch.stack([qkv[s][2 * D :] for s in range(t + 1)])
                weights = torch.softmax(keys, dim=0)  # per channel, over t' ≤ t
                y = torch.sigmoid(q) * (weights * values).sum(0)
                out[b, t] = _output_map(y, current[b][t])
        x = x + out
        for b in range(B):
            for t in range(T):
                new = [_rescale(wt * _silu(wc) + wc) for wt, wc in zip(transform[b][t], current[b][t])]
                transform[b][t], current[b][t] = current[b][t], new
    d = D // H
    out = torch.zeros_like(x)
    for b in range(B):
        qkv = [current[b][t][0] @ _rms(x[b, t]) for t in range(T)]
        for t in range(T):
            y = []
            for head in range(H):
                part = slice(head * d, (head + 1) * d)

                rotated = [_rms(_rotate(qkv[s][D : 2 * D][part], s)) for s in range(t + 1)]
                q = _rms(_rotate(qkv[t][:D][part], t))
                scores = torch.stack([q @ key / math.sqrt(d) for key in rotated])
                values = torch.stack([qkv[s][2 * D :][part] for s in range(t + 1)])
                y.append(torch.softmax(scores, dim=0) @ values)
            out[b, t] = _output_map(torch.cat(y), current[b][t])
    return x + out


SHAPE = {"mixer": "retention", "vocab_size": 10, "context": 16, "d_model": C, "qkv_dim": D, "n_heads": H, "ffn_dim": 16}


def _mixer(scope, ffn, recurrence=2):
    torch.manual_seed(0)
    options = {"scope": scope, "chunk_size": CHUNK, "recurrence": recurrence}
    model = ablate.build_model({**SHAPE, "ffn": ffn, "n_layers": 1, "mixer_options": options}).double()
    return model.blocks[0].mixer


@pytest.mark.parametrize("ffn", [True, False], ids=["ffn", "no-ffn"])
@pytest.mark.parametrize("scope", ["chunk", "sequence", "batch"])
def test_retention_matches_the_spec_position_by_position(scope, ffn):
    mixer = _mixer(scope, ffn, recurrence=3 if ffn else 2)
    with torch.no_grad():
        for p in mixer.parameters():  # well away from the tiny init, so that every term matters
            p.normal_(0, 0.5)
        x = torch.randn(2, T, C, dtype=torch.float64)
        torch.testing.assert_close(mixer(x), reference(mixer, x, scope, mixer.recurrence), atol=1e-10, rtol=0)


@pytest.mark.parametrize("scope", ["chunk", "sequence", "batch"])
def test_generated_weights_depend_on_the_input(scope):
    mixer = _mixer(scope, ffn=True)
    size = CHUNK if scope == "chunk" else 2 * CHUNK
    x1, x2 = torch.randn(2, 2, 2 * CHUNK, C, dtype=torch.float64)
    with torch.no_grad():
        for g1, g2 in zip(mixer.generate(rms_norm(x1), size), mixer.generate(rms_norm(x2), size)):
            assert g1.shape[-2:] in {(3 * D, C), (2 * C, D), (C, C)}
            assert (g1[:, -1] - g2[:, -1]).abs().max() > 1e-3  # the last chunk's weights differ
            if scope == "chunk":
                assert not g1[:, 0].any() and not g2[:, 0].any()  # chunk 0 has no prefix


def test_chunk_size_must_be_below_the_context():
    with pytest.raises(AblateError, match="chunk_size 16 must be below the context 16"):
        ablate.build_model({**SHAPE, "mixer_options": {"chunk_size": 16}})
    with pytest.raises(AblateError, match="scope must be one of"):
        ablate.build_model({**SHAPE, "mixer_options": {"scope": "global"}})

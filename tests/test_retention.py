"""retention against a slow reference written from the spec's equations, position by position, in float64."""

import math

import pytest
import torch

import ablate
from ablate.core.errors import AblateError
from ablate.nn.layers import rms_norm

C, D, H, T, CHUNK = 8, 12, 2, 13, 4  # T is not a multiple of CHUNK


def _rms(v):
    """RMS norm with torch's default eps (the float's machine epsilon)."""
    return v / torch.sqrt((v * v).mean(-1, keepdim=True) + torch.finfo(v.dtype).eps)


def _silu(z):
    return z * torch.sigmoid(z)


def _rescale(w):
    """Standard deviation 1/√fan_in: w · (n^-½ / (std + 1e-8)), std unbiased over the matrix."""
    return w * (w.shape[1] ** -0.5 / (w.std() + 1e-8))


def _rotate(v, t):
    """The seed's rotary on one head vector at position t: halves (i, i + d/2) turned by −t·10000^(-2i/d)."""
    d, out = v.numel(), v.clone()
    for i in range(d // 2):
        angle = t * 10000.0 ** (-2 * i / d)
        c, s = math.cos(angle), math.sin(angle)
        out[i], out[i + d // 2] = v[i] * c + v[i + d // 2] * s, -v[i] * s + v[i + d // 2] * c
    return out


def _output_map(y, w):
    if w[1] is None:  # without FFN: a plain linear output projection
        return w[2] @ y
    z = w[1] @ y
    return w[2] @ (z[: z.numel() // 2] * _silu(z[z.numel() // 2 :]))


def reference_block(w, x, scope, recurrence, n_heads, chunk=CHUNK):
    """The spec's retention block with the seed's details, one position at a time. x is the raw
    residual stream (B, T, C); w holds the weights under the seed's names: oa, t, qkv, sw (None
    without FFN), out, each as an (out, in) matrix."""
    B, T, C = x.shape
    D = w["qkv"].shape[0] // 3
    static = [w["qkv"], w["sw"], w["out"]]
    o = [[_rms(w["oa"][:C] @ _rms(x[b, t])) for t in range(T)] for b in range(B)]
    a = [[_rms(w["oa"][C:] @ _rms(x[b, t])) for t in range(T)] for b in range(B)]

    def generated(b, t):
        if scope == "batch":
            positions = [(i, s) for i in range(B) for s in range(T)]
        elif scope == "sequence":
            positions = [(b, s) for s in range(T)]
        else:
            positions = [(b, s) for s in range(t // chunk * chunk)]
        if not positions:  # chunk 0 of scope chunk
            G = torch.zeros(w["t"].shape[0], C, dtype=x.dtype)
        else:
            summed = sum(torch.outer(o[i][s], a[i][s]) for i, s in positions)
            if scope == "chunk":
                summed = summed / len(positions)
            G = (torch.softmax(summed / math.sqrt(C), dim=-1) @ w["t"].T).T
        if static[1] is not None:
            return [_rescale(G[: 3 * D]), _rescale(G[3 * D : 5 * D].reshape(2 * C, D)), _rescale(G[5 * D :])]
        return [_rescale(G[: 3 * D]), None, _rescale(G[3 * D :].reshape(C, D))]

    def update(wt, wc):
        return None if wc is None else _rescale(wt * _silu(wc) + wc)

    transform = [[generated(b, t) for t in range(T)] for b in range(B)]
    current = [[list(static) for _ in range(T)] for _ in range(B)]
    x = x.clone()
    for _ in range(recurrence):  # AFT: QK-norm over the full width, exp(k) unshifted, + 1e-6
        out = torch.zeros_like(x)
        for b in range(B):
            qkv = [current[b][t][0] @ _rms(x[b, t]) for t in range(T)]
            for t in range(T):
                e = [torch.exp(_rms(qkv[s][D : 2 * D])) for s in range(t + 1)]
                mean = sum(e[s] * qkv[s][2 * D :] for s in range(t + 1)) / (sum(e) + 1e-6)
                out[b, t] = _output_map(torch.sigmoid(_rms(qkv[t][:D])) * mean, current[b][t])
        x = x + out
        for b in range(B):
            for t in range(T):
                new = [update(wt, wc) for wt, wc in zip(transform[b][t], current[b][t])]
                transform[b][t], current[b][t] = current[b][t], new
    d = D // n_heads
    out = torch.zeros_like(x)
    for b in range(B):
        qkv = [current[b][t][0] @ _rms(x[b, t]) for t in range(T)]
        for t in range(T):
            y = []
            for head in range(n_heads):  # each head's 3d outputs are [q | k | v]
                part = [v[head * 3 * d : (head + 1) * 3 * d] for v in qkv]
                q = _rms(_rotate(part[t][:d], t))
                scores = torch.stack([q @ _rms(_rotate(part[s][d : 2 * d], s)) / math.sqrt(d) for s in range(t + 1)])
                values = torch.stack([part[s][2 * d :] for s in range(t + 1)])
                y.append(torch.softmax(scores, dim=0) @ values)
            out[b, t] = _output_map(torch.cat(y), current[b][t])
    return x + out


def reference_logits(state, hyperparams, idx, scope="batch", chunk=32):
    """The seed model from its state dict: norm(embed), blocks of retention and SwiGLU, norm, the
    tied unembedding; float64, one position at a time."""
    E = state["embed.weight"]
    x = torch.stack([torch.stack([_rms(E[i]) for i in row]) for row in idx])
    for n in range(hyperparams["n_layer"]):
        p = f"blocks.{n}."
        w = {
            "oa": state[p + "retain.oa.weight"],
            "t": state[p + "retain.t.weight"],
            "qkv": state[p + "retain.w_attn_qkv"],
            "sw": state[p + "retain.w_attn_swiglu"],
            "out": state[p + "retain.w_attn_out"],
        }
        x = reference_block(w, x, scope, hyperparams["r_layer"], hyperparams["n_head"], chunk)
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                z = state[p + "swiglu.swiglu.weight"] @ _rms(x[b, t])
                u, g = z.chunk(2)
                x[b, t] = x[b, t] + state[p + "swiglu.out.weight"] @ (u * _silu(g))
    return torch.stack([torch.stack([E @ _rms(h) for h in row]) for row in x])


SHAPE = {"mixer": "retention", "vocab_size": 10, "context": 16, "d_model": C, "qkv_dim": D, "n_heads": H, "ffn_dim": 16}


def _mixer(scope, ffn, recurrence=2):
    torch.manual_seed(0)
    options = {"scope": scope, "chunk_size": CHUNK, "recurrence": recurrence}
    model = ablate.build_model({**SHAPE, "ffn": ffn, "n_layers": 1, "mixer_options": options}).double()
    return model.blocks[0].mixer


@pytest.mark.parametrize("ffn", [True, False], ids=["ffn", "no-ffn"])
@pytest.mark.parametrize("scope", ["chunk", "sequence", "batch"])
def test_retention_matches_the_spec_position_by_position(scope, ffn):
    mixer = _mixer(scope, ffn, recurrence=3)
    with torch.no_grad():
        for p in mixer.parameters():  # well away from the init, so that every term matters
            p.normal_(0, 0.5)
        x = torch.randn(2, T, C, dtype=torch.float64)
        w = {"oa": mixer.produce.weight, "t": mixer.transform.weight, "qkv": mixer.qkv.weight, "out": mixer.out.weight}
        w["sw"] = mixer.sw.weight if ffn else None
        torch.testing.assert_close(mixer(x), reference_block(w, x, scope, 3, H), atol=1e-10, rtol=0)


@pytest.mark.parametrize("scope", ["chunk", "sequence", "batch"])
def test_generated_weights_depend_on_the_input(scope):
    mixer = _mixer(scope, ffn=True)
    size = CHUNK if scope == "chunk" else 2 * CHUNK
    x1, x2 = torch.randn(2, 2, 2 * CHUNK, C, dtype=torch.float64)
    with torch.no_grad():
        for g1, g2 in zip(
            mixer.generate(*mixer.produced(rms_norm(x1)), size), mixer.generate(*mixer.produced(rms_norm(x2)), size)
        ):
            assert g1.shape[-2:] in {(3 * D, C), (2 * C, D), (C, C)}
            assert (g1[:, -1] - g2[:, -1]).abs().max() > 1e-3  # the last chunk's weights differ
            if scope == "chunk":
                assert not g1[:, 0].any() and not g2[:, 0].any()  # chunk 0 has no prefix


def test_chunk_size_must_be_below_the_context():
    with pytest.raises(AblateError, match="chunk_size 16 must be below the context 16"):
        ablate.build_model({**SHAPE, "mixer_options": {"chunk_size": 16}})
    with pytest.raises(AblateError, match="option 'scope': Input should be 'chunk', 'sequence' or 'batch'"):
        ablate.build_model({**SHAPE, "mixer_options": {"scope": "global"}})

"""Every op of `ablate.nn.ops` against its naive reference (`naive_*`, beside the op: its paper's
recurrence written out in float64, one sequence, one head, one token at a time): the chunked and the
recurrent form agree with it to 1e-10, across chunk boundaries, from an initial state and to the
final state. Each reference has a mutation here (a decay one step late, a write without its
correction, ...) that the ops must not match: the comparison can fail."""

import math

import pytest
import torch

from ablate.nn import ops
from ablate.nn.ops import based, delta_rule, gla
from ablate.nn.ops.reference import each_head

B, T, H, K, V = 2, 13, 2, 4, 3
TOL = 1e-10


def draw(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    head_decay = -torch.rand(B, T, H, generator=g, dtype=torch.float64)  # log decays in (-1, 0]
    channel_decay = -torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    state = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)
    return q, k, v, head_decay, channel_decay, beta, state


def late_decay(scale):
    """gla's mutation: the decay applied after the write."""

    def step(S, q, k, v, g):
        decay = g.exp()[:, None] if g.dim() else g.exp()
        S = decay * (S + torch.outer(k, v))
        return S, scale * q @ S

    return step


def delta_step(scale, late=False, uncorrected=False):
    """The delta rule's mutations: the decay applied after the write, or a write without its correction."""

    def step(S, q, k, v, g, beta):
        S = S if late else g.exp() * S
        error = v if uncorrected else v - k @ S
        S = S + beta * torch.outer(k, error)
        S = g.exp() * S if late else S
        return S, scale * q @ S

    return step


def close(a, b):
    return (a - b).abs().max().item() < TOL


@pytest.mark.parametrize("chunk_size", [4, 64])
def test_gated_linear_attention_per_channel_and_per_head(chunk_size):
    q, k, v, head_g, channel_g, _, state = draw()
    scale = K**-0.5
    for g, chunk, recurrent, naive in [
        (channel_g, ops.chunk_gla, ops.recurrent_gla, gla.naive_gla),
        (head_g, ops.chunk_simple_gla, ops.recurrent_simple_gla, gla.naive_simple_gla),
    ]:
        want, want_state = naive(q, k, v, g, initial_state=state)
        wrong, _ = each_head(late_decay(scale), q, k, v, g, initial_state=state)
        kwargs = {"initial_state": state, "output_final_state": True}
        got, got_state = chunk(q, k, v, g, chunk_size=chunk_size, **kwargs)
        stepped, stepped_state = recurrent(q, k, v, g, **kwargs)
        assert close(got, want) and close(got_state, want_state)
        assert close(stepped, want) and close(stepped_state, want_state)
        assert not close(got, wrong)


@pytest.mark.parametrize("chunk_size", [4, 64])
def test_delta_rule_and_gated_delta_rule(chunk_size):
    q, k, v, head_g, _, beta, state = draw(1)
    k = torch.nn.functional.normalize(k, dim=-1)  # as DeltaNet feeds it: the update then contracts
    scale = K**-0.5
    for g, chunk, recurrent in [
        (head_g, ops.chunk_gated_delta_rule, ops.recurrent_gated_delta_rule),
        (torch.zeros_like(head_g), None, None),
    ]:
        want, want_state = delta_rule.naive_gated_delta_rule(q, k, v, g, beta, initial_state=state)
        kwargs = {"initial_state": state, "output_final_state": True}
        if chunk is None:  # the ungated rule: g = 0
            got, got_state = ops.chunk_delta_rule(q, k, v, beta, chunk_size=chunk_size, **kwargs)
            stepped, stepped_state = ops.recurrent_delta_rule(q, k, v, beta, **kwargs)
            assert close(delta_rule.naive_delta_rule(q, k, v, beta, initial_state=state)[0], want)
            wrong, _ = each_head(delta_step(scale, uncorrected=True), q, k, v, g, beta, initial_state=state)
        else:
            got, got_state = chunk(q, k, v, g, beta, chunk_size=chunk_size, **kwargs)
            stepped, stepped_state = recurrent(q, k, v, g, beta, **kwargs)
            wrong, _ = each_head(delta_step(scale, late=True), q, k, v, g, beta, initial_state=state)
        assert close(got, want) and close(got_state, want_state)
        assert close(stepped, want) and close(stepped_state, want_state)
        assert not close(got, wrong)


def test_linear_attention_normalised_and_not():
    q, k, v, *_ = draw(2)
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1  # positive features
    want, want_state = gla.naive_linear_attn(q, k, v)
    got, got_state = ops.chunk_linear_attn(q, k, v, output_final_state=True, chunk_size=4)
    stepped, _ = ops.recurrent_linear_attn(q, k, v)
    assert close(got, want) and close(stepped, want) and close(got_state, want_state)
    plain, _ = ops.chunk_linear_attn(q, k, v, normalize=False, chunk_size=4)
    assert not close(plain, want)  # the mutation: no normaliser
    want_plain, _ = gla.naive_linear_attn(q, k, v, normalize=False)
    assert close(plain, want_plain)


def test_based_parallel_and_recurrent_are_the_taylor_attention():
    q, k, v, *_ = draw(3)
    scale = K**-0.5
    want = based.naive_based(q, k, v)
    wrong = torch.zeros_like(want)  # the mutation: the Taylor series cut one term short
    for b in range(B):
        for h in range(H):
            for t in range(T):
                first_order = 1 + scale * k[b, : t + 1, h] @ q[b, t, h]
                wrong[b, t, h] = first_order @ v[b, : t + 1, h] / first_order.sum()
    got, _ = ops.parallel_based(q, k, v)
    stepped, state = ops.recurrent_based(q, k, v, output_final_state=True)
    assert close(got, want) and close(stepped, want) and not close(got, wrong)
    assert state.shape == (B, H, 1 + K + K * K, V + 1)


def test_strong_decays_stay_finite_in_long_chunks():
    """A decay of e^-30 per step over a chunk of 64: every factor the chunked form uses is a decay."""
    q, k, v, head_g, channel_g, beta, _ = draw(4)
    for o, _ in [
        ops.chunk_simple_gla(q.float(), k.float(), v.float(), 30 * head_g.float()),
        ops.chunk_gla(q.float(), k.float(), v.float(), 30 * channel_g.float(), chunk_size=64),
        ops.chunk_gated_delta_rule(q.float(), k.float(), v.float(), 30 * head_g.float(), beta.float()),
    ]:
        assert torch.isfinite(o).all()
    assert math.isfinite(ops.chunk_simple_gla(q, k, v, -1e4 * torch.ones_like(head_g))[0].abs().max().item())


def test_the_delta_rule_runs_in_bf16_with_its_triangular_solve_in_float32():
    """torch has no triangular solve in half precision; a model cast to bf16 (decoding an exported
    model, the GPU suite's decode part) reaches the delta rule with bf16 tensors."""
    from ablate.nn.ops.delta_rule import chunk_gated_delta_rule

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.nn.functional.normalize(torch.randn(1, 40, 2, 8, generator=g), dim=-1) for _ in range(3))
    decay = -torch.rand(1, 40, 2, generator=g) * 0.1
    beta = torch.rand(1, 40, 2, generator=g)
    want, _ = chunk_gated_delta_rule(q, k, v, decay, beta, chunk_size=16)
    got, _ = chunk_gated_delta_rule(*(t.bfloat16() for t in (q, k, v, decay, beta)), chunk_size=16)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("chunk_size", [4, 64])
def test_hgrn_is_its_gated_recurrence(chunk_size):
    """h_t = exp(g_t) h_{t-1} + x_t per channel (HGRN, Qin et al. 2023, eq. 3, real form)."""
    from ablate.nn.ops.hgrn import chunk_hgrn, naive_hgrn, recurrent_hgrn

    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, T, K, generator=g, dtype=torch.float64)
    decay = -3 * torch.rand(B, T, K, generator=g, dtype=torch.float64)
    state = torch.randn(B, K, generator=g, dtype=torch.float64)
    want, _ = naive_hgrn(x, decay, state)
    wrong = torch.zeros_like(x)
    for b in range(B):
        late = state[b].clone()
        for t in range(T):
            late = (late + x[b, t]) * decay[b, t].exp()  # the mutation: the gate applied after the input
            wrong[b, t] = late
    kwargs = {"initial_state": state, "output_final_state": True}
    got, got_state = chunk_hgrn(x, decay, chunk_size=chunk_size, **kwargs)
    stepped, stepped_state = recurrent_hgrn(x, decay, **kwargs)
    assert close(got, want) and close(got_state, want[:, -1])
    assert close(stepped, want) and close(stepped_state, want[:, -1])
    assert not close(got, wrong)
    strong, _ = chunk_hgrn(x.float(), 1e4 * decay.float(), chunk_size=64)  # gates near 0 stay finite
    assert torch.isfinite(strong).all()

"""The AFT family's numerics in float64: the stable sums against the definition (`naive_softmax_mean`,
beside the ops), and its identities."""

import pytest
import torch

import ablate
from ablate.nn.ops import causal_biased_softmax_mean, causal_softmax_mean, causal_softmax_mean_log_space
from ablate.nn.ops.aft import naive_softmax_mean


def _naive_mean(k, v, w):
    """The formula as printed: plain exponentials, which overflow for large keys."""
    T = k.size(1)
    e = torch.exp(k[:, None] + w[None, :, :, None]) * torch.ones(T, T, dtype=k.dtype).tril()[None, :, :, None]
    return (e * v[:, None]).sum(2) / e.sum(2)


def test_aft_sums_match_the_definition():
    torch.manual_seed(0)
    k, v = torch.randn(2, 40, 6), torch.randn(2, 40, 6)
    torch.testing.assert_close(causal_softmax_mean(k, v).double(), naive_softmax_mean(k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T, chunk", [(300, 64), (64, 64), (7, 4), (129, 16)])
def test_chunked_sums_match_the_definition_across_chunks(T, chunk):
    """Several chunks, a ragged last chunk, and the gradient, against the float64 definition."""
    torch.manual_seed(0)
    k = (torch.randn(2, T, 5, dtype=torch.float64) * 3).requires_grad_()
    v = torch.randn(2, T, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda k, v: causal_softmax_mean(k, v, chunk=chunk), (k[:, :40], v[:, :40]))
    torch.testing.assert_close(causal_softmax_mean(k, v, chunk=chunk), naive_softmax_mean(k, v), atol=1e-10, rtol=1e-10)


def test_chunked_sums_stay_exact_when_keys_climb_steadily():
    """Keys rise by 0.5 a position: every chunk has a new maximum; in float32 the chunked path
    (a rise of 32 per 64-position chunk) still matches the definition."""
    torch.manual_seed(0)
    T = 1024
    k = torch.arange(T, dtype=torch.float32)[None, :, None] * 0.5 + torch.randn(1, T, 4)
    v = torch.randn(1, T, 4)
    torch.testing.assert_close(causal_softmax_mean(k, v).double(), naive_softmax_mean(k, v), atol=2e-5, rtol=1e-4)


def test_keys_that_jump_within_a_chunk_take_the_log_space_path():
    """A rise of 100 inside one chunk would overflow the shifted exp; the result is still exact."""
    k = torch.zeros(1, 64, 2)
    k[0, 40:] = 100.0
    v = torch.randn(1, 64, 2)
    y = causal_softmax_mean(k, v)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), naive_softmax_mean(k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, causal_softmax_mean_log_space(k, v))


def test_aft_is_stable_for_long_sequences_with_large_keys():
    torch.manual_seed(0)
    k = (torch.randn(1, 4096, 3) * 1000).requires_grad_()  # exp would overflow float32 at 89
    v = torch.randn(1, 4096, 3)
    y = causal_softmax_mean(k, v)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(k.grad).all()
    ref = naive_softmax_mean(k.detach()[:, :400], v[:, :400])
    # At |k| ≈ 1000 one float32 ulp of a key is 6e-5, and the weights move by that much.
    torch.testing.assert_close(y.detach()[:, :400].double(), ref, atol=5e-4, rtol=0)
    assert y.abs().max() <= v.abs().max() + 1e-4  # a weighted mean stays inside the values


def test_biased_sums_equal_the_naive_formula_on_small_inputs():
    torch.manual_seed(0)
    k, v = torch.randn(2, 37, 5, dtype=torch.float64), torch.randn(2, 37, 5, dtype=torch.float64)
    w = torch.randn(37, 37, dtype=torch.float64)
    torch.testing.assert_close(causal_biased_softmax_mean(k, v, w), _naive_mean(k, v, w), atol=1e-10, rtol=0)
    torch.testing.assert_close(causal_biased_softmax_mean(k, v, w, block=1), _naive_mean(k, v, w), atol=1e-10, rtol=0)


def test_biased_sums_stay_finite_with_keys_that_grow_along_the_sequence():
    """Keys rise by 0.5 per position: a maximum over the whole sequence would underflow the early ones."""
    torch.manual_seed(0)
    T = 512
    k = (0.5 * torch.arange(T, dtype=torch.float32)[None, :, None] + torch.randn(1, T, 4)).requires_grad_()
    v, w = torch.randn(1, T, 4), torch.randn(T, T)
    assert not torch.isfinite(_naive_mean(k.detach(), v, w)).all()  # exp(256) overflows float32
    y = causal_biased_softmax_mean(k, v, w)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(k.grad).all()
    torch.testing.assert_close(y.detach().double(), naive_softmax_mean(k.detach(), v, w), atol=1e-4, rtol=0)
    # the same keys shifted by the whole sequence's maximum leave early positions 0/0
    shifted = k.detach() - k.detach().amax(dim=1, keepdim=True)
    assert not torch.isfinite(_naive_mean(shifted, v, w)).all()


def _mixers(name, options=None, T=29):
    """An aft-simple and a `name` mixer with the same q, k, v and output weights, in float64."""
    torch.manual_seed(0)
    cfg = {"vocab_size": 10, "context": T, "d_model": 8, "n_layers": 1, "n_heads": 2, "qkv_dim": 8, "ffn_dim": 8}
    simple = ablate.build_model({"mixer": "aft-simple", **cfg}).double().blocks[0].mixer
    other = ablate.build_model({"mixer": name, "mixer_options": options or {}, **cfg}).double().blocks[0].mixer
    other.load_state_dict({**simple.state_dict(), "bias": other.bias.detach()})
    return simple, other


def test_aft_full_with_zero_bias_equals_aft_simple():
    simple, full = _mixers("aft-full")
    x = torch.randn(3, 29, 8, dtype=torch.float64)
    with torch.no_grad():
        full.bias.zero_()
        torch.testing.assert_close(full(x), simple(x), atol=1e-12, rtol=0)
        full.bias.normal_()
        assert (full(x) - simple(x)).abs().max() > 1e-3


def test_aft_local_is_aft_simple_plus_the_in_window_bias_correction():
    T, s = 29, 4
    simple, local = _mixers("aft-local", {"window": s}, T)
    x = torch.randn(2, T, 8, dtype=torch.float64)
    with torch.no_grad():
        local.bias.normal_()
        q, k, v = simple.qkv(x).chunk(3, dim=-1)
        num, den = (torch.exp(k) * v).cumsum(1), torch.exp(k).cumsum(1)  # aft-simple's sums
        w = local.pairwise_bias()
        for t in range(T):
            for lag in range(min(s, t + 1)):  # in the window the weight e^k becomes e^(k + w)
                extra = torch.exp(w[t, t - lag]) - 1
                num[:, t] += extra * torch.exp(k[:, t - lag]) * v[:, t - lag]
                den[:, t] += extra * torch.exp(k[:, t - lag])
        expected = simple.out(torch.sigmoid(q) * num / den)
        torch.testing.assert_close(local(x), expected, atol=1e-10, rtol=0)
        assert (w[torch.arange(T)[:, None] - torch.arange(T)[None, :] >= s] == 0).all()  # zero bias outside it

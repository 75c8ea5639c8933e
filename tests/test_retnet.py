"""RetNet's three forms compute the same function (float64, odd lengths, a short last chunk)."""

import pytest
import torch

import ablate
from ablate.architectures.retnet import decays, parallel
from ablate.nn import ops


def test_forms_agree_on_raw_tensors():
    """The chunked and recurrent forms are simple GLA's ops with the fixed log decay log γ_h."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 37, 4, 6, dtype=torch.float64)
    gamma = decays(4)
    g = gamma.log().expand(2, 37, 4)
    expected = parallel(q, k, v, gamma)
    torch.testing.assert_close(ops.recurrent_simple_gla(q, k, v, g, scale=1.0)[0], expected, atol=1e-10, rtol=0)
    for size in (1, 8, 37, 64):
        got, _ = ops.chunk_simple_gla(q, k, v, g, scale=1.0, chunk_size=size)
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


def test_decays_follow_the_paper():
    assert decays(3).tolist() == [1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128]


@pytest.mark.parametrize("form", ["recurrent", "chunkwise"])
def test_forms_agree_inside_the_model(form):
    cfg = {
        "mixer": "retnet",
        "vocab_size": 30,
        "context": 40,
        "d_model": 12,
        "n_layers": 2,
        "n_heads": 3,
        "qkv_dim": 12,
    }
    torch.manual_seed(0)
    reference = ablate.build_model({**cfg, "mixer_options": {"form": "parallel"}}).double()
    other = ablate.build_model({**cfg, "mixer_options": {"form": form, "chunk_size": 8}}).double()
    other.load_state_dict(reference.state_dict())
    idx = torch.randint(0, 30, (2, 37))
    torch.testing.assert_close(other(idx), reference(idx), atol=1e-10, rtol=0)

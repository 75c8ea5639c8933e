"""RetNet's three forms compute the same function (float64, odd lengths, a short last chunk)."""

import pytest
import torch

import ablate
from ablate.architectures.retnet import chunkwise, decays, parallel, recurrent


def test_forms_agree_on_raw_tensors():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 37, 6, dtype=torch.float64)
    gamma = decays(4)
    expected = parallel(q, k, v, gamma)
    torch.testing.assert_close(recurrent(q, k, v, gamma), expected, atol=1e-10, rtol=0)
    for size in (1, 8, 37, 64):
        torch.testing.assert_close(chunkwise(q, k, v, gamma, size), expected, atol=1e-10, rtol=0)


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

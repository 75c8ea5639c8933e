"""Based as published: its sliding-window attention knows the order of the tokens in its window
(rotary), and its short convolution, where asked, does too. Without positions and without a
convolution, every part of the layer sums over an unordered set: swapping two earlier tokens
cannot move its output. Both answers are known, and both are checked."""

import pytest
import torch

import ablate

T, WINDOW = 16, 4


def swap_moves(pos: str, options: dict, mixer: str = "based") -> float:
    """How far the output at the last position moves, relative to its size, when the tokens at
    t − 1 and t − 3 (both inside the window) trade places."""
    torch.manual_seed(0)
    cfg = {"vocab_size": 64, "context": T, "d_model": 32, "n_layers": 1, "n_heads": 2, "qkv_dim": 32, "pos": pos}
    block = ablate.build_model({**cfg, "mixer": mixer, "mixer_options": options}, device="cpu").double()
    layer = block.blocks[0].mixer
    x = torch.randn(1, T, 32, dtype=torch.float64)
    swapped = x.clone()
    swapped[:, [T - 2, T - 4]] = x[:, [T - 4, T - 2]]
    with torch.no_grad():
        y, y_swapped = layer(x)[0, -1], layer(swapped)[0, -1]
    return ((y - y_swapped).norm() / y.norm()).item()


def test_the_window_tells_its_offsets_apart_as_a_windowed_mha_does():
    reference = swap_moves("rope", {"window": WINDOW}, mixer="mha")
    assert reference > 1e-2
    assert swap_moves("rope", {"window": WINDOW}) > 1e-2


def test_without_positions_or_a_convolution_the_layer_sees_a_set():
    assert swap_moves("none", {"window": WINDOW}) < 1e-12


def test_the_short_convolution_alone_tells_order_apart():
    assert swap_moves("none", {"window": WINDOW, "conv_size": 4}) > 1e-2


@pytest.mark.parametrize("conv_size", [None, 4])
def test_its_state_counts_the_convolutions_tail(conv_size):
    cfg = {"vocab_size": 64, "context": T, "d_model": 32, "n_layers": 1, "n_heads": 2, "qkv_dim": 32}
    model = ablate.build_model({**cfg, "mixer": "based", "mixer_options": {"window": WINDOW, "conv_size": conv_size}})
    linear = 2 * (1 + 16 + 16 * 16) * (16 + 1)
    conv = 0 if conv_size is None else (2 * 2 * 16 + 32) * (conv_size - 1)
    assert model.state_size() == linear + 2 * WINDOW * 32 + conv

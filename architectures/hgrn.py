"""hgrn: the Hierarchically Gated Recurrent Network's token mixer (Qin, Yang and Zhong 2023,
arXiv:2311.04823), in the real-valued form flash-linear-attention's HGRN layer has.

Per channel, a forget gate bounded below by the layer's λ, and an input coupled to it:
    f_t = λ + (1 − λ) σ(W_f x_t)        i_t = swish(W_i x_t) ⊙ (1 − f_t)
    h_t = f_t ⊙ h_{t-1} + i_t            y_t = W_out (rms_norm(h_t) ⊙ swish(W_g x_t))   (norm per head)
The bound rises with depth, λ = layer / n_layers, so that lower layers forget fast and upper
ones hold long: the paper learns the bounds, one cumulative softmax over the layers, which starts
at exactly these values; here they stay there, since a mixer is one layer. A state of qkv_dim
numbers per sequence, whatever the context.
`kernel`: `chunk_hgrn` from ablate.nn.ops.hgrn (torch) or flash-linear-attention (fla); decoding
from a state runs ablate's `chunk_hgrn` for the prompt and `recurrent_hgrn` per token.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ablate.mixers.registry import Mixer, Size, register
from ablate.nn.layers import rms_norm
from ablate.nn.ops.hgrn import chunk_hgrn, recurrent_hgrn
from ablate.nn.ops.kernels import Kernel, run_op


@register("hgrn")
class HGRN(Mixer):
    """HGRN (Qin et al. 2023): a gated linear recurrence per channel, its forget gate bounded below by depth.

    f = λ + (1 − λ)σ(W_f x) with λ = layer / n_layers, input swish(W_i x)(1 − f), h_t = f h_{t−1} +
    i; output RMS-normed per head and gated by swish(W_g x); a state of qkv_dim numbers.
    """

    cannot_decode = None

    def __init__(self, cfg, layer_idx, *, chunk_size: Size = 16, kernel: Kernel | None = None):
        super().__init__()
        self.n_heads, self.chunk_size, self.kernel = cfg.n_heads, chunk_size, kernel
        self.lower_bound = layer_idx / cfg.n_layers
        self.input = nn.Linear(cfg.d_model, cfg.qkv_dim, bias=False)
        self.forget = nn.Linear(cfg.d_model, cfg.qkv_dim, bias=False)
        self.gate = nn.Linear(cfg.d_model, cfg.qkv_dim, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrence's input i and log forget gate g, each (B, T, qkv_dim), in log space: a
        gate near 0 (the lowest layer's bound is 0) has a finite log and gradient."""
        z, bound = self.forget(x), self.lower_bound
        g = F.logsigmoid(z) + math.log1p(-bound)  # log((1 − λ) σ(z))
        if bound > 0:
            g = torch.logaddexp(g, g.new_tensor(math.log(bound)))
        return F.silu(self.input(x)) * (1 - bound) * torch.sigmoid(-z), g  # 1 − f = (1 − λ) σ(−z)

    def output(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.out(rms_norm(h.unflatten(-1, (self.n_heads, -1))).flatten(2) * F.silu(self.gate(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = run_op(chunk_hgrn, self.kernel, *self.inputs(x), chunk_size=self.chunk_size)
        return self.output(x, h)

    def prefill(self, x):
        h, state = chunk_hgrn(*self.inputs(x), output_final_state=True, chunk_size=self.chunk_size)
        return self.output(x, h), state

    def step(self, x, state, pos):
        h, state = recurrent_hgrn(*self.inputs(x), initial_state=state, output_final_state=True)
        return self.output(x, h), state

    def state_size(self):
        return self.out.in_features

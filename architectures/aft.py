"""The Attention Free Transformer family (Zhai et al., 2021, arXiv:2105.14103)."""

import torch
from torch import nn

from ablate.layers import causal_softmax_mean, rms_norm
from ablate.registry import Mixer, register


@register("aft-simple")
class AFTSimple(Mixer):
    """AFT without position bias: σ(q) ⊙ causal softmax(k)-weighted mean of v, O(T·C)."""

    def __init__(self, cfg, *, qk_norm: bool = False):
        super().__init__()
        self.n_heads, self.qk_norm = cfg.n_heads, qk_norm
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.qk_norm:
            q, k = self._head_norm(q), self._head_norm(k)
        return self.out(torch.sigmoid(q) * causal_softmax_mean(k, v))

    def _head_norm(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x.unflatten(-1, (self.n_heads, -1))).flatten(-2)

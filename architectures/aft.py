"""The Attention Free Transformer family (Zhai et al., 2021, arXiv:2105.14103).

y_t = σ(q_t) ⊙ Σ_{t'≤t} exp(k_t' + w_{t,t'}) ⊙ v_t' / Σ_{t'≤t} exp(k_t' + w_{t,t'}), per channel,
with w ≡ 0 (aft-simple), a learned pairwise bias (aft-full) or a learned bias inside a
window and 0 outside it (aft-local: out-of-window keys stay in the sums).
"""

import torch
from torch import nn

from ablate.mixers.registry import Mixer, check_int, register
from ablate.nn.layers import causal_mask, head_rms_norm, mean_keys
from ablate.nn.ops import causal_biased_softmax_mean, causal_softmax_mean, causal_softmax_mean_flops


class _AFT(Mixer):
    """q, k, v projections, optional per-head QK-norm, and the output map shared by the family."""

    def __init__(self, cfg, *, qk_norm: bool):
        super().__init__()
        self.n_heads, self.qk_norm = cfg.n_heads, qk_norm
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.qk_norm:
            q, k = head_rms_norm(q, self.n_heads), head_rms_norm(k, self.n_heads)
        return self.out(torch.sigmoid(q) * self.weighted_mean(k, v))

    def weighted_mean(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def elementwise_flops(self, T):
        return 6 * self.out.in_features  # σ(q) (5 per element) and the product with the mean


@register("aft-simple")
class AFTSimple(_AFT):
    """AFT without position bias: σ(q) ⊙ causal softmax(k)-weighted mean of v, O(T·C)."""

    def __init__(self, cfg, layer_idx, *, qk_norm: bool = False):
        super().__init__(cfg, qk_norm=qk_norm)

    def weighted_mean(self, k, v):
        return causal_softmax_mean(k, v)

    def elementwise_flops(self, T):
        return super().elementwise_flops(T) + causal_softmax_mean_flops(self.out.in_features)

    def state_size(self):
        return 3 * self.out.in_features  # per channel: the log-sums of exp(k), exp(k)·v⁺ and exp(k)·v⁻


class _BiasedAFT(_AFT):
    """An AFT with a learned bias w_{t,t'} on the pairs 0 ≤ t - t' < window (all t' ≤ t without one), 0 elsewhere.

    Only the used pairs are parameters, so the count is honest and no parameter is dead.
    """

    def __init__(self, cfg, *, qk_norm: bool, window: int | None):
        super().__init__(cfg, qk_norm=qk_norm)
        T, reach = cfg.context, window or cfg.context
        self.register_buffer("used", causal_mask(T, window, None), persistent=False)
        # drawn by the backbone like every parameter: zero under init seed, N(0, 0.02) under gpt2
        self.bias = nn.Parameter(torch.empty(sum(min(t + 1, reach) for t in range(T))))
        self.window = window

    def pairwise_bias(self) -> torch.Tensor:
        """The (T, T) matrix w: learned entries where used (row by row), zeros elsewhere."""
        return self.bias.new_zeros(self.used.shape).masked_scatter(self.used, self.bias)

    def weighted_mean(self, k, v):
        return causal_biased_softmax_mean(k, v, self.pairwise_bias())

    def elementwise_flops(self, T):
        # per key seen and channel: add the bias, exp, and weight v; then the two means combined
        return super().elementwise_flops(T) + (3 * mean_keys(T) + 10) * self.out.in_features

    def state_size(self):
        # in-window keys and values, and the three running sums of the keys beyond the window
        return (2 * self.window + 3) * self.out.in_features if self.window else None


@register("aft-full")
class AFTFull(_BiasedAFT):
    """AFT with a learned bias for every pair t' ≤ t of the context, O(T²·C)."""

    def __init__(self, cfg, layer_idx, *, qk_norm: bool = False):
        super().__init__(cfg, qk_norm=qk_norm, window=None)


@register("aft-local")
class AFTLocal(_BiasedAFT):
    """AFT with a learned bias for t - t' < window; keys further back stay in the sums with bias 0."""

    def __init__(self, cfg, layer_idx, *, window: int = 32, qk_norm: bool = False):
        check_int(window, "aft-local window")
        super().__init__(cfg, qk_norm=qk_norm, window=window)

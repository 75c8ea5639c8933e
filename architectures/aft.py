"""The Attention Free Transformer family (Zhai et al., 2021, arXiv:2105.14103).

y_t = σ(q_t) ⊙ Σ_{t'≤t} exp(k_t' + w_{t,t'}) ⊙ v_t' / Σ_{t'≤t} exp(k_t' + w_{t,t'}), per channel,
with w ≡ 0 (aft-simple), a learned pairwise bias (aft-full) or a learned bias inside a
window and 0 outside it (aft-local: out-of-window keys stay in the sums).
"""

import torch
from torch import nn

from ablate.mixers.registry import Mixer, Size, register
from ablate.nn.layers import causal_mask, head_rms_norm
from ablate.nn.ops import (
    causal_biased_softmax_mean,
    causal_softmax_mean,
    softmax_mean_state,
    softmax_mean_step,
)


class _AFT(Mixer):
    """q, k, v projections, optional per-head QK-norm, and the output map shared by the family."""

    def __init__(self, cfg, *, qk_norm: bool):
        super().__init__()
        self.n_heads, self.qk_norm = cfg.n_heads, qk_norm
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)

    cannot_decode = None

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.qk_norm:
            q, k = head_rms_norm(q, self.n_heads), head_rms_norm(k, self.n_heads)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)
        return self.out(torch.sigmoid(q) * self.weighted_mean(k, v))

    def prefill(self, x):
        q, k, v = self.heads(x)
        return self.out(torch.sigmoid(q) * self.weighted_mean(k, v)), self.state_after(k, v)

    def step(self, x, state, pos):
        q, k, v = self.heads(x)
        y, state = self.mean_step(k[:, 0], v[:, 0], state, pos)
        return self.out(torch.sigmoid(q) * y[:, None]), state

    def weighted_mean(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_after(self, k: torch.Tensor, v: torch.Tensor):
        """The decoding state after keys and values k, v (B, T, C)."""
        raise NotImplementedError

    def mean_step(self, k: torch.Tensor, v: torch.Tensor, state, pos: int):
        """The weighted mean at position pos with one more key and value (B, C), and the new state."""
        raise NotImplementedError


@register("aft-simple")
class AFTSimple(_AFT):
    """AFT without position bias: σ(q) ⊙ causal softmax(k)-weighted mean of v, O(T·C).

    In log space (`logcumsumexp`), without a bias between positions.
    """

    def __init__(self, cfg, layer_idx, *, qk_norm: bool = False):
        super().__init__(cfg, qk_norm=qk_norm)

    def weighted_mean(self, k, v):
        return causal_softmax_mean(k, v)

    def state_after(self, k, v):
        return softmax_mean_state(k, v)

    def mean_step(self, k, v, state, pos):
        return softmax_mean_step(k, v, state)

    def state_size(self):
        return 3 * self.out.in_features  # per channel: the log-sums of exp(k), exp(k)·v⁺ and exp(k)·v⁻


class _BiasedAFT(_AFT):
    """An AFT with a learned bias w_{t,t'} on the pairs 0 ≤ t - t' < window (all t' ≤ t without one), 0 elsewhere.

    Only the used pairs are parameters, so the count is honest and no parameter is dead.
    """

    def __init__(self, cfg, *, qk_norm: bool, window: int | None):
        super().__init__(cfg, qk_norm=qk_norm)
        T, reach = cfg.context, window or cfg.context
        self.context, self.window = T, window
        self.register_buffer("used", self.derived_buffers()["used"], persistent=False)
        # drawn by the backbone like every parameter: zero under init seed, N(0, 0.02) under gpt2
        self.bias = nn.Parameter(torch.empty(sum(min(t + 1, reach) for t in range(T))))

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        """The pairs that have a bias, computed afresh: what a loader that restores no buffers sets."""
        return {"used": causal_mask(self.context, self.window, None)}

    def pairwise_bias(self) -> torch.Tensor:
        """The (T, T) matrix w: learned entries where used (row by row), zeros elsewhere."""
        return self.bias.new_zeros(self.used.shape).masked_scatter(self.used, self.bias)

    def weighted_mean(self, k, v):
        return causal_biased_softmax_mean(k, v, self.pairwise_bias())

    def decode_limit(self):
        return self.used.size(0)

    def state_after(self, k, v):
        """The last `window` keys and values (every one without a window), and the running sums
        (`softmax_mean_state`) of the keys before them, whose bias is 0."""
        older = max(k.size(1) - (self.window or k.size(1)), 0)
        if older:
            sums = softmax_mean_state(k[:, :older], v[:, :older])
        else:
            sums = (torch.full_like(k[:, 0], -torch.inf), torch.zeros_like(k[:, 0]), torch.zeros_like(k[:, 0]))
        return {"k": k[:, older:], "v": v[:, older:], "sums": sums}

    def mean_step(self, k, v, state, pos):
        keys, values, sums = (
            torch.cat([state["k"], k[:, None]], 1),
            torch.cat([state["v"], v[:, None]], 1),
            state["sums"],
        )
        if self.window and keys.size(1) > self.window:  # the oldest key leaves the window for the sums
            _, sums = softmax_mean_step(keys[:, 0], values[:, 0], sums)
            keys, values = keys[:, 1:], values[:, 1:]
        n, reach = keys.size(1), self.window or self.used.size(0)
        start = pos * (pos + 1) // 2 if pos < reach else reach * (reach + 1) // 2 + (pos - reach) * reach
        scores = keys + self.bias[start : start + n].to(keys.dtype)[:, None]  # row pos of w: keys pos − n + 1 … pos
        m, den, num = sums
        top = torch.maximum(m, scores.amax(dim=1))
        e, carried = torch.exp(scores - top[:, None]), torch.exp(m - top)
        y = (num * carried + (e * values).sum(1)) / (den * carried + e.sum(1))
        return y, {"k": keys, "v": values, "sums": sums}

    def state_size(self):
        # in-window keys and values, and the three running sums of the keys beyond the window
        return (2 * self.window + 3) * self.out.in_features if self.window else None


@register("aft-full")
class AFTFull(_BiasedAFT):
    """AFT with a learned bias for every pair t' ≤ t of the context, O(T²·C).

    context·(context+1)/2 bias parameters per layer; stable for large and growing keys. Its
    biases end at the context: it decodes no further.
    """

    def __init__(self, cfg, layer_idx, *, qk_norm: bool = False):
        super().__init__(cfg, qk_norm=qk_norm, window=None)


@register("aft-local")
class AFTLocal(_BiasedAFT):
    """AFT with a learned bias for t - t' < window; keys further back stay in the sums with bias 0.

    The window is `window` positions.
    """

    def __init__(self, cfg, layer_idx, *, window: Size = 32, qk_norm: bool = False):
        super().__init__(cfg, qk_norm=qk_norm, window=window)

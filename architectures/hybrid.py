"""Hybrids of global linear attention (AFT) and local softmax attention.

`hybrid` is a layer schedule: layer i runs pattern[i mod len(pattern)], each entry a mixer
name or {name: {options}}; the default [aft-simple ×3, mha(window=64)] is the "3:1"
placement. `hybrid-heads` mixes inside one layer: some heads run AFT, the rest windowed
softmax attention, and their outputs are concatenated before the output map.
"""

import torch
from torch import nn

from ablate.core.errors import AblateError
from ablate.mixers import registry
from ablate.mixers.registry import Mixer, Size, register
from ablate.nn.layers import (
    Rotary,
    alibi,
    cached_attention,
    kv_cache,
    rms_norm,
    slopes_of,
    softmax_attention,
)
from ablate.nn.ops import causal_softmax_mean, softmax_mean_state, softmax_mean_step

DEFAULT_PATTERN = ("aft-simple", "aft-simple", "aft-simple", {"mha": {"window": 64}})


@register("hybrid")
class Hybrid(Mixer):
    """A layer schedule: layer i runs pattern[i mod len(pattern)] (default 3 AFT layers to 1 local mha).

    Each pattern entry is a mixer name or `{name: {options}}`.
    """

    cannot_decode = None  # unless a part cannot: then its reason, per instance

    def __init__(self, cfg, layer_idx, *, pattern: list | tuple = DEFAULT_PATTERN):
        super().__init__()
        if not isinstance(pattern, list | tuple) or not pattern:
            raise AblateError(f"hybrid pattern must be a non-empty list of mixers, got {pattern!r}")
        if any(entry == "hybrid" or isinstance(entry, dict) and "hybrid" in entry for entry in pattern):
            raise AblateError("a hybrid pattern cannot contain hybrid itself")
        entries = [registry.mixer_entry(entry, "hybrid pattern") for entry in pattern]  # all checked
        name, options = entries[layer_idx % len(entries)]
        self.mixer = registry.mixer_class(name)(cfg, layer_idx, **options)
        self.causal, self.adds_residual = self.mixer.causal, self.mixer.adds_residual
        self.cannot_decode = self.mixer.cannot_decode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x)

    def prefill(self, x):
        return self.mixer.prefill(x)

    def step(self, x, state, pos):
        return self.mixer.step(x, state, pos)

    def decode_limit(self):
        return self.mixer.decode_limit()

    def residual_maps(self):
        return self.mixer.residual_maps()

    def attention_probs(self, x):
        return self.mixer.attention_probs(x)

    def state_size(self):
        return self.mixer.state_size()


@register("hybrid-heads")
class HybridHeads(Mixer):
    """One layer whose heads are split: `aft_heads` run aft-simple, the rest windowed softmax attention.

    `aft_heads` defaults to half the heads.

    The attention heads take rotary and QK-norm where the backbone says so (`pos`, `qk_norm`).
    """

    def __init__(self, cfg, layer_idx, *, aft_heads: Size | None = None, window: Size = 64):
        super().__init__()
        aft_heads = cfg.n_heads // 2 if aft_heads is None else aft_heads
        if aft_heads >= cfg.n_heads:
            raise AblateError(f"hybrid-heads aft_heads must leave attention heads: {aft_heads} of {cfg.n_heads}")
        self.n_heads, self.aft_heads, self.window = cfg.n_heads, aft_heads, window
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.context) if cfg.pos == "rope" else None
        self.alibi = alibi(cfg, cfg.n_heads - aft_heads)
        self.qk_norm = cfg.qk_norm

    cannot_decode = None

    def heads(self, x: torch.Tensor, start: int = 0) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The AFT heads' q, k, v, flattened to (B, T, a·d), and the attention heads' (B, H − a, T, d)
        for positions start, start + 1, …, rotated and normed."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, -1)).unbind(2)  # each (B, T, H, d)
        a = self.aft_heads
        aft = tuple(t[:, :, :a].flatten(2) for t in (q, k, v))
        q, k, v = (t[:, :, a:].transpose(1, 2) for t in (q, k, v))
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        return aft, (q, k, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prefill(x)[0]

    def prefill(self, x):
        """The output; the AFT heads' running sums and the window's keys and values."""
        (aq, ak, av), (q, k, v) = self.heads(x)
        y = self.output(
            aq, causal_softmax_mean(ak, av), softmax_attention(q, k, v, self.window, slopes=slopes_of(self.alibi))
        )
        return y, {"sums": softmax_mean_state(ak, av), **kv_cache(k, v, self.window)}

    def step(self, x, state, pos):
        (aq, ak, av), (q, k, v) = self.heads(x, pos)
        mean, sums = softmax_mean_step(ak[:, 0], av[:, 0], state["sums"])
        kept = kv_cache(k, v, self.window, state)
        y = self.output(aq, mean[:, None], cached_attention(q, kept, slopes_of(self.alibi)))
        return y, {"sums": sums, **kept}

    def output(self, aq: torch.Tensor, mean: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """σ(q)·mean of the AFT heads beside the attention heads' (B, H − a, T, d), mapped back."""
        return self.out(torch.cat([torch.sigmoid(aq) * mean, attended.transpose(1, 2).flatten(2)], dim=-1))

    def state_size(self):
        d = self.out.in_features // self.n_heads
        return 3 * self.aft_heads * d + 2 * self.window * (self.n_heads - self.aft_heads) * d

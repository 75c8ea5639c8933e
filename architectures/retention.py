"""retention: attention layers whose weights are generated from the input (the Strawberry mechanism).

One block (see ../shared/spec/variants.md, "retention"): produce a C×C mixing matrix from
the input, turn it into transform weights for qkv and the output maps, run R AFT steps
whose weights are refined by the update rule W ← W_τ ⊙ silu(W_c) + W_c after each step,
then one causal softmax attention with the final weights. The block's FFN follows as usual.

`scope` says which positions the produced matrix sums over: `chunk` (causal: the weights
for chunk k come from chunks < k only), `sequence` (the whole sequence: sees the future)
or `batch` (every sequence of the batch: what the published code does; leaks across
sequences). Weights are tensors of shape (B or 1, chunks or 1, out, in).

Every detail Strawberry's code fixes is kept (the spec's "Seed fidelity"), so that Strawberry's
weights give Strawberry's logits: the rescale's std + 1e-8, the AFT steps' QK-norm over the
full width and unshifted exp(k) with a denominator + 1e-6, the final attention's q, k, v
interleaved per head and its half-split rotary turned by −θ.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ablate.core.errors import AblateError
from ablate.mixers.registry import Mixer, Size, register
from ablate.nn.layers import (
    HalfSplitRotary,
    kv_cache,
    refuse_alibi,
    rms_norm,
    softmax_attention,
)


def rescale(w: torch.Tensor) -> torch.Tensor:
    """Scale each (out, in) matrix to standard deviation 1/√in: w · (in^-½ / (std(w) + 1e-8)), the
    std unbiased over the matrix. An all-zero matrix stays zero (its std is taken from a
    clamped variance, so that its gradient is finite)."""
    std = w.var(dim=(-2, -1), keepdim=True).clamp_min(1e-30).sqrt()
    return w * (w.size(-1) ** -0.5 / (std + 1e-8))


def project(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h W ᵀ for h (B, T, in), with w (out, in) or one matrix per chunk, (B or 1, K, out, in)."""
    if w.dim() == 2:
        return F.linear(h, w)
    B, T, _ = h.shape
    K = w.size(1)
    return (h.view(B, K, T // K, -1) @ w.transpose(-1, -2)).reshape(B, T, -1)


@register("retention")
class Retention(Mixer):
    """Input-generated qkv/output weights, refined over R AFT steps, then causal softmax attention.

    The Strawberry mechanism: qkv and output weights generated from the input, refined by the
    update rule over R (`recurrence`) AFT steps, then one causal softmax attention; mini-SwiGLU
    output maps with FFN, plain linear maps without. `scope: chunk` generates each chunk's
    weights from the chunks up to it (`chunk_size`, below the context); `sequence` and `batch`
    are the published, non-causal forms (they see later positions, and cannot decode).
    """

    adds_residual = True
    cannot_decode = None

    def __init__(
        self,
        cfg,
        layer_idx,
        *,
        scope: Literal["chunk", "sequence", "batch"] = "chunk",
        recurrence: Size = 2,
        chunk_size: Size = 32,
    ):
        super().__init__()
        refuse_alibi(cfg, "retention")
        if scope == "chunk" and chunk_size >= cfg.context:
            raise AblateError(
                f"retention chunk_size {chunk_size} must be below the context {cfg.context}: "
                "otherwise the whole sequence runs on the static weights alone"
            )
        C, D = cfg.d_model, cfg.qkv_dim
        self.scope, self.recurrence, self.chunk_size = scope, recurrence, chunk_size
        self.causal = scope == "chunk"
        if scope != "chunk":
            self.cannot_decode = f"scope {scope} generates each position's weights from later positions too"
        self.n_heads = cfg.n_heads
        self.produce = nn.Linear(C, 2 * C, bias=False)  # W_oa
        # Static weights W⁰: qkv, and the output map — a mini-SwiGLU (sw, out) with FFN, plain without.
        self.qkv = nn.Linear(C, 3 * D, bias=False)
        self.sw = nn.Linear(D, 2 * C, bias=False) if cfg.ffn else None
        self.out = nn.Linear(C if cfg.ffn else D, C, bias=False)
        # W_t: one generated row of width C per C entries of each static weight.
        self.transform = nn.Linear(C, sum(w.numel() for w in self.static()) // C, bias=False)
        self.rotary = HalfSplitRotary(cfg.head_dim, cfg.context + chunk_size)  # covers the padded tail

    def static(self) -> list[torch.Tensor]:
        return [m.weight for m in (self.qkv, self.sw, self.out) if m is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]

    def prefill(self, x):
        """The output, and what a decoder carries on from position T within the last chunk: the
        sums Σ oᵀa of the chunks before it and of its positions so far, that chunk's refined
        weights, each AFT step's running sums and the final attention's keys and values."""
        return self.run(x, keep_state=True)

    def run(self, x: torch.Tensor, keep_state: bool = False) -> tuple[torch.Tensor, dict | None]:
        T = x.size(1)
        size = self.chunk_size if self.scope == "chunk" else T
        pad = -T % size
        x = F.pad(x, (0, 0, 0, pad))  # padding sits after every real position: causal steps never see it
        h = rms_norm(x)
        o, a = self.produced(h)
        stages = self.weight_stages(self.generate(o, a, size))
        sums = []
        for weights in stages[:-1]:
            y, running = self.aft(rms_norm(x), weights)
            x = x + y
            sums.append(tuple(t[:, T - 1] for t in running))  # at the last real position: padding left out
        y, (k, v) = self.attention(rms_norm(x), stages[-1])
        x = x + y
        if not keep_state:
            return x[:, :T], None
        chunk = (T - 1) // size  # the chunk of the last position, which the next one may continue
        pairs = torch.einsum("btc,bte->btce", o[:, :T], a[:, :T])
        state = {
            "prefix": pairs[:, : chunk * size].sum(1),
            "partial": pairs[:, chunk * size :].sum(1),
            "stages": [[w[:, chunk : chunk + 1] for w in weights] for weights in stages[1:]],
            "sums": sums,
            "k": k[:, :, :T],
            "v": v[:, :, :T],
        }
        return x[:, :T], state

    def step(self, x, state, pos):
        """One token: a new chunk (pos a multiple of chunk_size) first takes its weights from the
        mean of Σ oᵀa over every position before it, as `generate` gives them."""
        prefix, partial, stages = state["prefix"], state["partial"], state["stages"]
        if pos % self.chunk_size == 0:
            prefix, partial = prefix + partial, torch.zeros_like(partial)
            stages = self.weight_stages(self.generated(prefix[:, None] / pos))[1:]
        o, a = self.produced(rms_norm(x))
        partial = partial + o[:, 0, :, None] * a[:, 0, None, :]
        stages = [self.static(), *stages]
        sums = []
        for weights, (num, den) in zip(stages[:-1], state["sums"]):
            q, k, v = project(rms_norm(x), weights[0]).chunk(3, dim=-1)
            e = torch.exp(rms_norm(k))
            num, den = num + (e * v)[:, 0], den + e[:, 0]
            x = x + self.output_map(torch.sigmoid(rms_norm(q)) * (num / (den + 1e-6))[:, None], weights)
            sums.append((num, den))
        q, k, v = self.attention_heads(rms_norm(x), stages[-1], pos)
        kept = kv_cache(k, v, cache=state)
        y = F.scaled_dot_product_attention(q, kept["k"], kept["v"]).transpose(1, 2).flatten(2)
        x = x + self.output_map(y, stages[-1])
        state = {"prefix": prefix, "partial": partial, "stages": stages[1:], "sums": sums, **kept}
        return x, state

    def produced(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """o and a (B, T, C): the two halves of W_oa h, each normed."""
        o, a = (rms_norm(part) for part in self.produce(h).chunk(2, dim=-1))
        return o, a

    def generate(self, o: torch.Tensor, a: torch.Tensor, size: int) -> list[torch.Tensor]:
        """The generated weights of each chunk (of the sequence, or of the batch), from Σ oᵀa over
        the scope: for `chunk`, the mean over every position of the chunks before."""
        B, T, C = o.shape
        if self.scope == "batch":
            return self.generated(torch.einsum("btc,bte->ce", o, a)[None, None])
        if self.scope == "sequence":
            return self.generated(torch.einsum("btc,bte->bce", o, a)[:, None])
        K = T // size
        per_chunk = torch.einsum("bklc,bkle->bkce", o.view(B, K, size, C), a.view(B, K, size, C))
        before = F.pad(per_chunk.cumsum(dim=1)[:, :-1], (0, 0, 0, 0, 1, 0))  # sums over the chunks before each
        counts = torch.arange(K, device=o.device, dtype=o.dtype) * size
        generated = self.generated(before / counts.clamp_min(1)[:, None, None])
        # chunk 0 has no prefix: its generated weights are zero
        return [g * (torch.arange(K, device=o.device) > 0)[:, None, None] for g in generated]

    def generated(self, summed: torch.Tensor) -> list[torch.Tensor]:
        """G = (softmax(summed / √C) W_t)ᵀ for summed (B|1, K|1, C, C), split into one rescaled
        matrix per static weight, each (B|1, K|1, out, in)."""
        C = summed.size(-1)
        mixing = torch.softmax(summed * (1 / math.sqrt(C)), dim=-1)
        generated = self.transform(mixing).transpose(-1, -2)  # (B|1, K|1, rows, C)
        parts = generated.split([w.numel() // C for w in self.static()], dim=-2)
        return [rescale(g.reshape(*g.shape[:2], *w.shape)) for g, w in zip(parts, self.static())]

    def weight_stages(self, generated: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """[W⁰, W¹, …, W^R]: the static weights, then each refinement W ← W_τ ⊙ silu(W_c) + W_c
        (rescaled), W_τ the weights before W_c and the generated ones before W⁰. AFT step r runs
        on W^r, the final attention on W^R."""
        transform, current = generated, self.static()
        stages = [current]
        for _ in range(self.recurrence):
            transform, current = current, [rescale(wt * F.silu(wc) + wc) for wt, wc in zip(transform, current)]
            stages.append(current)
        return stages

    def output_map(self, y: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        if self.sw is None:
            return project(y, weights[1])
        u, g = project(y, weights[1]).chunk(2, dim=-1)
        return project(u * F.silu(g), weights[2])

    def aft(self, h: torch.Tensor, weights: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """aft-simple as Strawberry computes it: q and k normed over the full width (no heads), and
        exp(k) unshifted, which the norm bounds by exp(√D). Also the running sums Σ exp(k)·v and
        Σ exp(k) at every position, which a decoder carries on."""
        q, k, v = project(h, weights[0]).chunk(3, dim=-1)
        q, k = rms_norm(q), rms_norm(k)
        e = torch.exp(k)
        num, den = torch.cumsum(e * v, dim=1), torch.cumsum(e, dim=1)
        return self.output_map(torch.sigmoid(q) * (num / (den + 1e-6)), weights), (num, den)

    def attention_heads(self, h: torch.Tensor, weights: list[torch.Tensor], start: int = 0) -> tuple:
        """q, k, v (B, H, T, d) for positions start, start + 1, …; each head's 3d outputs are
        [q_h | k_h | v_h], as Strawberry lays them; q and k rotated, then normed."""
        B, T, _ = h.shape
        q, k, v = project(h, weights[0]).view(B, T, self.n_heads, -1).transpose(1, 2).chunk(3, dim=-1)
        return rms_norm(self.rotary(q, start)), rms_norm(self.rotary(k, start)), v

    def attention(self, h: torch.Tensor, weights: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Causal softmax attention, mapped back; and its keys and values."""
        q, k, v = self.attention_heads(h, weights)
        y = softmax_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.output_map(y, weights), (k, v)

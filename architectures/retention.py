"""retention: attention layers whose weights are generated from the input (the Strawberry mechanism).

One block (see ../shared/spec/variants.md, "retention"): produce a C×C mixing matrix from
the input, turn it into transform weights for qkv and the output maps, run R AFT steps
whose weights are refined by the update rule W ← W_τ ⊙ silu(W_c) + W_c after each step,
then one causal softmax attention with the final weights. The block's FFN follows as usual.

`scope` says which positions the produced matrix sums over: `chunk` (causal: the weights
for chunk k come from chunks < k only), `sequence` (the whole sequence: sees the future)
or `batch` (every sequence of the batch: what the published code does; leaks across
sequences). Weights are tensors of shape (B or 1, chunks or 1, out, in).

Every detail the seed's code fixes is kept (the spec's "Seed fidelity"), so that the seed's
weights give the seed's logits: the rescale's std + 1e-8, the AFT steps' QK-norm over the
full width and unshifted exp(k) with a denominator + 1e-6, the final attention's q, k, v
interleaved per head and its half-split rotary turned by −θ.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ablate.errors import AblateError
from ablate.mixers.registry import Mixer, check_choice, check_int, register
from ablate.nn.layers import HalfSplitRotary, attention_softmax_flops, rms_norm, softmax_attention

SCOPES = ("chunk", "sequence", "batch")


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
    """Input-generated qkv/output weights, refined over R AFT steps, then causal softmax attention."""

    adds_residual = True

    def __init__(self, cfg, layer_idx, *, scope: str = "chunk", recurrence: int = 2, chunk_size: int = 32):
        super().__init__()
        check_choice(scope, "retention scope", SCOPES)
        check_int(recurrence, "retention recurrence")
        check_int(chunk_size, "retention chunk_size")
        if scope == "chunk" and chunk_size >= cfg.context:
            raise AblateError(
                f"retention chunk_size {chunk_size} must be below the context {cfg.context}: "
                "otherwise the whole sequence runs on the static weights alone"
            )
        C, D = cfg.d_model, cfg.qkv_dim
        self.scope, self.recurrence, self.chunk_size = scope, recurrence, chunk_size
        self.causal = scope == "chunk"
        self.n_heads = cfg.n_heads
        self.produce = nn.Linear(C, 2 * C, bias=False)  # W_oa
        # Static weights W⁰: qkv, and the output map — a mini-SwiGLU (sw, out) with FFN, plain without.
        self.qkv = nn.Linear(C, 3 * D, bias=False)
        self.sw = nn.Linear(D, 2 * C, bias=False) if cfg.ffn else None
        self.out = nn.Linear(C if cfg.ffn else D, C, bias=False)
        # W_t: one generated row of width C per C entries of each static weight.
        self.transform = nn.Linear(C, sum(w.numel() for w in self.static()) // C, bias=False)
        self.rotary = HalfSplitRotary(cfg.head_dim, cfg.context + chunk_size)  # covers the padded tail

    def elementwise_flops(self, T):
        """Per AFT step: q and k norms, σ(q) and the gate, the running means (exp, product, two
        cumulative sums, + eps, division); the output maps' swish; each update
        of the weights (swish, product, sum, rescale: ~10 per entry) and the generated weights'
        rescale (3 per entry), shared by the tokens of a chunk; the final attention's softmax."""
        C, D = self.out.out_features, self.qkv.out_features // 3
        per_step = 4 * 2 * D + 6 * D + 6 * D + (6 * C if self.sw is not None else 0)
        weights = sum(w.numel() for w in self.static())
        size = self.chunk_size if self.scope == "chunk" else T
        per_chunk = (10 * self.recurrence + 3) * weights / size
        return (self.recurrence + 1) * per_step + per_chunk + attention_softmax_flops(self.n_heads, T)

    def static(self) -> list[torch.Tensor]:
        return [m.weight for m in (self.qkv, self.sw, self.out) if m is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _B, T, _C = x.shape
        size = self.chunk_size if self.scope == "chunk" else T
        pad = -T % size
        x = F.pad(x, (0, 0, 0, pad))  # padding sits after every real position: causal steps never see it
        current = self.static()
        transform = self.generate(rms_norm(x), size)
        for _ in range(self.recurrence):
            x = x + self.aft(rms_norm(x), current)
            updated = [rescale(wt * F.silu(wc) + wc) for wt, wc in zip(transform, current)]
            transform, current = current, updated
        x = x + self.attention(rms_norm(x), current)
        return x[:, :T]

    def generate(self, h: torch.Tensor, size: int) -> list[torch.Tensor]:
        """G = (softmax(Σ oᵀa / √C) W_t)ᵀ, split into one rescaled matrix per static weight."""
        B, T, C = h.shape
        o, a = (rms_norm(part) for part in self.produce(h).chunk(2, dim=-1))
        if self.scope == "batch":
            summed = torch.einsum("btc,bte->ce", o, a)[None, None]
        elif self.scope == "sequence":
            summed = torch.einsum("btc,bte->bce", o, a)[:, None]
        else:
            K = T // size
            per_chunk = torch.einsum("bklc,bkle->bkce", o.view(B, K, size, C), a.view(B, K, size, C))
            before = F.pad(per_chunk.cumsum(dim=1)[:, :-1], (0, 0, 0, 0, 1, 0))  # sums over the chunks before each
            counts = torch.arange(K, device=h.device, dtype=h.dtype) * size
            summed = before / counts.clamp_min(1)[:, None, None]
        mixing = torch.softmax(summed * (1 / math.sqrt(C)), dim=-1)
        generated = self.transform(mixing).transpose(-1, -2)  # (B|1, K|1, rows, C)
        if self.scope == "chunk":  # chunk 0 has no prefix: its generated weights are zero
            generated = generated * (torch.arange(generated.size(1), device=h.device) > 0)[:, None, None]
        rows = [w.numel() // C for w in self.static()]
        parts = generated.split(rows, dim=-2)
        return [rescale(g.reshape(*g.shape[:2], *w.shape)) for g, w in zip(parts, self.static())]

    def output_map(self, y: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        if self.sw is None:
            return project(y, weights[1])
        u, g = project(y, weights[1]).chunk(2, dim=-1)
        return project(u * F.silu(g), weights[2])

    def aft(self, h: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """aft-simple as the seed computes it: q and k normed over the full width (no heads), and
        exp(k) unshifted, which the norm bounds by exp(√D)."""
        q, k, v = project(h, weights[0]).chunk(3, dim=-1)
        q, k = rms_norm(q), rms_norm(k)
        e = torch.exp(k)
        y = torch.cumsum(e * v, dim=1) / (torch.cumsum(e, dim=1) + 1e-6)
        return self.output_map(torch.sigmoid(q) * y, weights)

    def attention(self, h: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """Causal softmax attention; each head's 3d outputs are [q_h | k_h | v_h], as the seed lays them."""
        B, T, _ = h.shape
        q, k, v = project(h, weights[0]).view(B, T, self.n_heads, -1).transpose(1, 2).chunk(3, dim=-1)
        q, k = rms_norm(self.rotary(q)), rms_norm(self.rotary(k))
        y = softmax_attention(q, k, v).transpose(1, 2).reshape(B, T, -1)
        return self.output_map(y, weights)

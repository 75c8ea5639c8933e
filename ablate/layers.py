"""Building blocks shared by the backbone and the mixers: norms, rotary, attention, FFNs, causal AFT sums."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ablate.errors import AblateError


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMS norm over the last axis without a learned weight and with torch's default eps, as the
    seed model has it."""
    return F.rms_norm(x, (x.size(-1),))


def head_rms_norm(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """RMS norm of each head's slice of the last axis: QK-norm for (..., H·d) tensors."""
    return rms_norm(x.unflatten(-1, (n_heads, -1))).flatten(-2)


def rotary_angles(head_dim: int, context: int, base: float = 10000.0) -> torch.Tensor:
    """(context, head_dim/2) angles t·base^(−2i/d), in float64 so that a float64 model rotates exactly."""
    if head_dim % 2:
        raise AblateError(f"rotary needs an even head width, got qkv_dim/n_heads = {head_dim}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return torch.outer(torch.arange(context, dtype=torch.float64), inv_freq)


class Rotary(nn.Module):
    """Rotary position embedding for (B, H, T, d) tensors: each pair (x_2j, x_2j+1) at position t
    turned by the angle t·base^(-2j/d). Tables are buffers, not parameters.

    Written as x·C + swap(x)·S, C = (cos, cos) and S = (−sin, sin) per pair and swap exchanging
    the two of each pair: the same numbers as (x1·cos − x2·sin, x1·sin + x2·cos) to the last
    bit, in fewer element-wise passes. The tables are float64 and cast to the input's dtype, so
    a float64 model rotates exactly.
    """

    def __init__(self, head_dim: int, context: int):
        super().__init__()
        angles = rotary_angles(head_dim, context)
        cos, sin = angles.cos(), angles.sin()
        self.register_buffer("cos", torch.stack((cos, cos), dim=-1).flatten(-2), persistent=False)
        self.register_buffer("sin", torch.stack((-sin, sin), dim=-1).flatten(-2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(-2)
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        return x * self.cos[:T].to(x.dtype) + swapped * self.sin[:T].to(x.dtype)


class HalfSplitRotary(nn.Module):
    """The seed's rotary form for (B, H, T, d) tensors: the two halves x1, x2 of each head's d
    turned by −θ, y1 = x1·cos + x2·sin, y2 = −x1·sin + x2·cos, angles t·base^(−2i/d). Not a
    relabelling of `Rotary` where the projection weights are generated from the input."""

    def __init__(self, head_dim: int, context: int):
        super().__init__()
        angles = rotary_angles(head_dim, context)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(-2)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Causal softmax attention over (B, H, T, d); with `window`, position t sees t-window+1..t only."""
    if window is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(q.size(-2), window, q.device))


def causal_mask(T: int, window: int | None, device) -> torch.Tensor:
    """(T, T), True where query t may see key t': t - window < t' ≤ t (every t' ≤ t without a window)."""
    lag = torch.arange(T, device=device)[:, None] - torch.arange(T, device=device)[None, :]
    return (lag >= 0) & (lag < (window or T))


def attention_probs(q: torch.Tensor, k: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """The (B, H, T, T) weights softmax_attention applies, written out (for diagnostics)."""
    scores = (q @ k.transpose(-1, -2)) / q.size(-1) ** 0.5
    return torch.softmax(scores.masked_fill(~causal_mask(q.size(-2), window, q.device), float("-inf")), dim=-1)


def mean_keys(T: int, window: int | None = None) -> float:
    """How many keys a causal position sees on average over a context of T (at most `window`)."""
    reach = window or T
    return sum(min(t + 1, reach) for t in range(T)) / T


# Declared element-wise work per token, which torch's FLOP counter (matmuls only) does not see.
# Counts are operations per element: a softmax is max, subtract, exp, sum and divide.
def attention_softmax_flops(n_heads: int, T: int, window: int | None = None) -> float:
    """The softmax over each head's attended scores."""
    return 5 * n_heads * mean_keys(T, window)


def causal_softmax_mean_flops(channels: int) -> float:
    """`causal_softmax_mean` per token and channel: the chunk maximum, the shifted exp, the
    product with v, two running sums, the carries from earlier chunks (a scale and two
    multiply-adds) and the division."""
    return 10 * channels


class SwiGLU(nn.Module):
    """FFN (u ⊙ silu(g)) W_out with [u, g] = x W_in: 3·C·F parameters."""

    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.w_in = nn.Linear(d_model, 2 * ffn_dim, bias=False)
        self.w_out = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, g = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(u * F.silu(g))


class GeluMLP(nn.Module):
    """The classic two-layer GELU MLP: 2·C·F parameters."""

    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__()
        self.w_in = nn.Linear(d_model, ffn_dim, bias=False)
        self.w_out = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(F.gelu(self.w_in(x)))


FFNS = {"swiglu": SwiGLU, "gelu": GeluMLP}


IGNORE_INDEX = -100  # a target that is not scored (F.cross_entropy's default ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of h Wᵀ, a block of rows at a time, its gradient formed on the way.

    The (N, V) logits never exist whole, and the softmax of each block is turned into the
    gradient while it is still in cache: one pass where log_softmax, nll_loss and their
    backward would make four over the full logits.
    """

    @staticmethod
    def forward(ctx, h, weight, target, rows):
        scored = target != IGNORE_INDEX
        n = scored.sum().clamp_min(1)  # a tensor: no host sync
        grad_h, grad_w = torch.empty_like(h), torch.zeros_like(weight)
        total = torch.zeros((), dtype=_at_least_float32(h.dtype), device=h.device)
        for start in range(0, h.size(0), rows):
            hb, sb = h[start : start + rows], scored[start : start + rows]
            tb = target[start : start + rows].clamp_min(0)  # ignored rows pick any class, then weigh 0
            logits = hb @ weight.t()
            logits = logits.to(_at_least_float32(logits.dtype))
            lse = torch.logsumexp(logits, dim=-1)
            total = total + ((lse - logits.gather(1, tb[:, None]).squeeze(1)) * sb).sum()
            g = torch.exp(logits.sub_(lse[:, None]))  # the softmax, in place of the logits
            g[torch.arange(len(tb), device=g.device), tb] -= 1.0
            g = g.mul_((sb / n)[:, None]).to(h.dtype)
            grad_h[start : start + rows] = g @ weight
            grad_w += g.t() @ hb
        ctx.save_for_backward(grad_h, grad_w)
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """bf16/fp16 logits (under autocast) are summed in float32; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(h @ weight.T, target) for h (N, C), weight (V, C), with targets equal to
    IGNORE_INDEX not scored: fused when training, plain when no gradient is needed (where
    forming one would be wasted work)."""
    if not torch.is_grad_enabled() or not (h.requires_grad or weight.requires_grad):
        logits = F.linear(h, weight)
        return F.cross_entropy(logits.to(_at_least_float32(logits.dtype)), target, ignore_index=IGNORE_INDEX)
    rows = max(1, (1 << 20) // weight.size(0))  # a block of logits of about 4 MB
    return _LinearCrossEntropy.apply(h, weight, target, rows)


_EPS = 1e-20


# exp(-60) ≈ 1e-26: far above float32's smallest normal at exp(-87), so no term that matters underflows
SAFE_RISE = 60.0


def causal_softmax_mean(k: torch.Tensor, v: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """y_t = Σ_{t'≤t} exp(k_t') v_t' / Σ_{t'≤t} exp(k_t'), per channel, along dim 1 (time).

    Chunked running sums. The keys of chunk c are shifted by r_c, the largest key up to the
    end of that chunk, so no exponent is positive; the sums of earlier chunks are carried in by
    factors exp(r_j - r_c) ≤ 1. The result does not depend on the shifts, so they carry no
    gradient. It is exact while r_c exceeds every position's running maximum by less than
    SAFE_RISE (a chunk's keys rise by less than that above what came before); for keys that do
    (nothing a trained layer produces), the log-space form takes over.
    """
    B, T, C = k.shape
    L = min(chunk, T)
    K = -(-T // L)
    pad = K * L - T
    kb = F.pad(k, (0, 0, 0, pad), value=float("-inf")).view(B, K, L, C)  # padding weighs nothing
    vb = F.pad(v, (0, 0, 0, pad)).view(B, K, L, C)
    shift = torch.cummax(kb.detach().amax(dim=2), dim=1).values  # (B, K, C)
    before = torch.cat([k.detach()[:, :1], shift[:, :-1]], dim=1)  # the least running maximum in each chunk
    if not k.is_meta and bool((shift - before > SAFE_RISE).any()):  # meta tensors (counting FLOPs) hold no values
        return causal_softmax_mean_log_space(k, v)
    e = torch.exp(kb - shift[:, :, None])
    den = e.cumsum(dim=2)
    num = (e * vb).cumsum(dim=2)
    if K > 1:  # add what the earlier chunks summed, rescaled from their shift to this chunk's
        earlier = torch.ones(K, K, dtype=torch.bool, device=k.device).tril(-1)
        scale = torch.exp(shift[:, None] - shift[:, :, None]).masked_fill(~earlier[None, :, :, None], 0.0)
        den = den + torch.einsum("bcjn,bjn->bcn", scale, den[:, :, -1])[:, :, None]
        num = num + torch.einsum("bcjn,bjn->bcn", scale, num[:, :, -1])[:, :, None]
    return (num / den).view(B, K * L, C)[:, :T]


def causal_softmax_mean_log_space(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """causal_softmax_mean with logcumsumexp: exact for any keys, several times slower.

    A log needs positive arguments, so v is split by sign into v⁺ + ε and v⁻ + ε; the ε
    (which keeps the logs finite) cancels in the difference.
    """
    log_den = torch.logcumsumexp(k, dim=1)
    pos = torch.logcumsumexp(k + torch.log(v.clamp_min(0) + _EPS), dim=1)
    neg = torch.logcumsumexp(k + torch.log((-v).clamp_min(0) + _EPS), dim=1)
    return torch.exp(pos - log_den) - torch.exp(neg - log_den)


def causal_biased_softmax_mean(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, block: int = 16) -> torch.Tensor:
    """y_t = Σ_{t'≤t} exp(k_t' + w_{t,t'}) v_t' / Σ_{t'≤t} exp(k_t' + w_{t,t'}), per channel.

    k, v are (B, T, C), w is (T, T) (entries above the diagonal are ignored). The sum is cut
    into blocks of `block` positions. Within the diagonal block every (t, t') term is kept in
    log space, so keys that grow along the sequence cannot underflow the earlier ones. Earlier
    blocks are summed with matmuls, keys shifted by the maximum key seen before the query's
    block and bias rows by their own maximum, so no exponent is positive. The two parts are
    then merged by their log-sums. O(T²·C) time, O(T·block·C + T²/block·C) memory.
    """
    B, T, C = k.shape
    L = min(block, T)
    K = -(-T // L)
    pad = K * L - T
    kb = F.pad(k, (0, 0, 0, pad)).view(B, K, L, C)
    vb = F.pad(v, (0, 0, 0, pad)).view(B, K, L, C)
    wb = F.pad(w[:T, :T], (0, pad, 0, pad)).view(K, L, K, L)
    lower = torch.ones(L, L, dtype=torch.bool, device=k.device).tril()

    # The diagonal blocks, exactly: per query, a softmax over its own block's past.
    w_diag = torch.diagonal(wb, dim1=0, dim2=2).permute(2, 0, 1)  # (K, L_query, L_key)
    scores = kb[:, :, None] + w_diag[None, :, :, :, None]  # (B, K, L, L, C)
    scores = scores.masked_fill(~lower[:, :, None], float("-inf"))
    log_diag = torch.logsumexp(scores, dim=3)
    mean_diag = (torch.softmax(scores, dim=3) * vb[:, :, None]).sum(3)
    if K == 1:
        return mean_diag.reshape(B, -1, C)[:, :T]

    # Earlier blocks: shift keys by the running maximum over the blocks before the query's.
    block_max = kb.amax(dim=2)  # (B, K, C)
    prior_max = torch.cat([block_max[:, :1], torch.cummax(block_max, dim=1).values[:, :-1]], dim=1)
    earlier = torch.ones(K, K, dtype=torch.bool, device=k.device).tril(-1)  # key block j < query block i
    w_earlier = wb.masked_fill(~earlier[:, None, :, None], float("-inf"))  # (K_i, L, K_j, L)
    w_max = w_earlier.amax(dim=(2, 3)).clamp_min(torch.finfo(w.dtype).min)  # row maxima; -inf rows in block 0
    weight = torch.exp(w_earlier - w_max[:, :, None, None])  # (K_i, L, K_j, L), 0 where j ≥ i
    shifted = kb[:, None] - prior_max[:, :, None, None, :]  # (B, K_i, K_j, L, C)
    key = torch.exp(shifted.masked_fill(~earlier[:, :, None, None], float("-inf")))
    den = torch.einsum("isjt,bijtc->bisc", weight, key)
    num = torch.einsum("isjt,bijtc->bisc", weight, key * vb[:, None])
    has = den > 0  # false in block 0, which has no earlier blocks
    safe = torch.where(has, den, torch.ones_like(den))
    log_earlier = torch.where(has, torch.log(safe) + prior_max[:, :, None] + w_max[None, :, :, None], -math.inf)
    mean_earlier = num / safe

    log_total = torch.logaddexp(log_diag, log_earlier)
    y = torch.exp(log_diag - log_total) * mean_diag + torch.exp(log_earlier - log_total) * mean_earlier
    return y.reshape(B, -1, C)[:, :T]

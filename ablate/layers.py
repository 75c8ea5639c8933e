"""Building blocks shared by the backbone and the mixers: norms, rotary, attention, FFNs, causal AFT sums."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ablate.errors import AblateError


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS norm over the last axis without a learned weight (the seed model has none)."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


def head_rms_norm(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """RMS norm of each head's slice of the last axis: QK-norm for (..., H·d) tensors."""
    return rms_norm(x.unflatten(-1, (n_heads, -1))).flatten(-2)


class Rotary(nn.Module):
    """Rotary position embedding for (B, H, T, d) tensors; tables are buffers, not parameters.

    The tables are float64 and cast to the input's dtype, so a float64 model rotates exactly.
    """

    def __init__(self, head_dim: int, context: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise AblateError(f"rotary needs an even head width, got qkv_dim/n_heads = {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(context, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(-2)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Causal softmax attention over (B, H, T, d); with `window`, position t sees t-window+1..t only."""
    if window is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.size(-2)
    lag = torch.arange(T, device=q.device)[:, None] - torch.arange(T, device=q.device)[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=(lag >= 0) & (lag < window))


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
    """`causal_softmax_mean`: three logcumsumexp (max, subtract, exp, add, log: 5 each), two
    clamped logs of v (3 each), two exps and three subtractions of the combination."""
    return (3 * 5 + 2 * 3 + 2 + 3) * channels


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

_EPS = 1e-20


def causal_softmax_mean(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y_t = Σ_{t'≤t} exp(k_t') v_t' / Σ_{t'≤t} exp(k_t'), per channel, along dim 1 (time).

    Computed in log space with logcumsumexp, so neither large nor very different keys
    overflow or underflow. A log needs positive arguments, so v is split by sign into
    v⁺ + ε and v⁻ + ε; the ε (which keeps the logs finite) cancels in the difference.
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

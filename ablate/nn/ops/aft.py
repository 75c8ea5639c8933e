"""Causal AFT sums: running softmax-weighted means over the past, stable in float32."""

import math

import torch
import torch.nn.functional as F

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


def softmax_mean_state(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The running sums `causal_softmax_mean` reaches at the end of k, v (B, T, C), as a decoder
    carries them: per channel the largest key m, Σ exp(k − m) and Σ exp(k − m)·v."""
    m = k.amax(dim=1)
    e = torch.exp(k - m[:, None])
    return m, e.sum(dim=1), (e * v).sum(dim=1)


def softmax_mean_step(k: torch.Tensor, v: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple:
    """One more key and value (B, C) into the sums `state`: the mean after them, and the new sums.
    Empty sums are m = −inf, both sums 0."""
    m, den, num = state
    top = torch.maximum(m, k)
    old, new = torch.exp(m - top), torch.exp(k - top)
    den, num = den * old + new, num * old + new * v
    return num / den, (top, den, num)


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


def naive_softmax_mean(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """The reference, O(T²) in float64: y_t = Σ_{t'≤t} softmax_{t'}(k_{t'} + w_{t,t'}) v_{t'}, the
    definition written out with a softmax over the prefix (w: pair biases (T, T), none where None)."""
    k, v = k.double(), v.double()
    T = k.size(1)
    w = torch.zeros(T, T, dtype=torch.float64) if w is None else w.double()
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    scores = (k[:, None] + w[None, :, :, None]).masked_fill(~mask[None, :, :, None], float("-inf"))
    return (torch.softmax(scores, dim=2) * v[:, None]).sum(2)

"""Building blocks shared by the backbone and the mixers: norms, rotary, attention, FFNs."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ablate.core.errors import AblateError


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMS norm over the last axis without a learned weight and with torch's default eps, as
    Strawberry's model has it."""
    return F.rms_norm(x, (x.size(-1),))


def head_rms_norm(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """RMS norm of each head's slice of the last axis: QK-norm for (..., H·d) tensors."""
    return rms_norm(x.unflatten(-1, (n_heads, -1))).flatten(-2)


def rotary_angles(head_dim: int, positions: int | range, base: float = 10000.0) -> torch.Tensor:
    """(positions, head_dim/2) angles t·base^(−2i/d) for t in `positions` (range(n) for an int),
    in float64 so that a float64 model rotates exactly; on the CPU, whatever the default device, so
    that every device gets the same numbers (and a model built on meta does not run meta kernels)."""
    if head_dim % 2:
        raise AblateError(f"rotary needs an even head width, got qkv_dim/n_heads = {head_dim}")
    positions = range(positions) if isinstance(positions, int) else positions
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim)
    return torch.outer(torch.arange(positions.start, positions.stop, dtype=torch.float64, device="cpu"), inv_freq)


class _Float64Tables(nn.Module):
    """Rotation tables (buffers `cos` and `sin`, not parameters) for the positions of the context,
    kept in float64 whatever the model is cast to: they move with the model's device, are cast to
    the input's dtype where used, and a model cast to a low precision and back
    (`.half().double()`) still rotates exactly. Positions past the context (a decoder going on
    from its state) get their rows computed when asked for."""

    def __init__(self, head_dim: int, context: int):
        super().__init__()
        self.head_dim, self.context = head_dim, context
        for name, table in self.derived_buffers().items():  # meta where a model is only measured
            self.register_buffer(name, table.to(torch.get_default_device()), persistent=False)

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        """The tables, computed afresh: what a loader that restores no buffers sets them to."""
        return dict(zip(("cos", "sin"), self.tables(rotary_angles(self.head_dim, self.context))))

    def tables(self, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def rows(self, start: int, T: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The cos and sin rows of positions start … start + T − 1, in `dtype`; past the tables'
        end they grow to twice what is asked (once per doubling, not once per decoded token)."""
        if start + T > self.cos.size(0):
            grown = self.tables(rotary_angles(self.head_dim, 2 * (start + T)))  # on the CPU, as at the start
            self.cos, self.sin = (table.to(self.cos.device) for table in grown)
        return self.cos[start : start + T].to(dtype), self.sin[start : start + T].to(dtype)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.cos, self.sin = (table.to(self.cos.device) for table in self.derived_buffers().values())
        return self


class Rotary(_Float64Tables):
    """Rotary position embedding for (B, H, T, d) tensors: each pair (x_2j, x_2j+1) at position t
    turned by the angle t·base^(-2j/d); `start` is the position of the first of the T.

    Written as x·C + swap(x)·S, C = (cos, cos) and S = (−sin, sin) per pair and swap exchanging
    the two of each pair: the same numbers as (x1·cos − x2·sin, x1·sin + x2·cos) to the last
    bit, in fewer element-wise passes.
    """

    def tables(self, angles):
        cos, sin = angles.cos(), angles.sin()
        return torch.stack((cos, cos), dim=-1).flatten(-2), torch.stack((-sin, sin), dim=-1).flatten(-2)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        cos, sin = self.rows(start, x.size(-2), x.dtype)
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        return x * cos + swapped * sin


class HalfSplitRotary(_Float64Tables):
    """Strawberry's rotary form for (B, H, T, d) tensors: the two halves x1, x2 of each head's d
    turned by −θ, y1 = x1·cos + x2·sin, y2 = −x1·sin + x2·cos, angles t·base^(−2i/d). Not a
    relabelling of `Rotary` where the projection weights are generated from the input."""

    def tables(self, angles):
        return angles.cos(), angles.sin()

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        cos, sin = self.rows(start, x.size(-2), x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None = None,
    dropout: float = 0.0,
    slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal softmax attention over (B, H, T, d); with `window`, position t sees t-window+1..t only;
    `dropout` on the attention weights (pass 0 outside training); `slopes` (H,) add ALiBi's bias
    −m·(t − t′) to each score. A window much shorter than the sequence is attended block by block
    (`windowed_blocks`), in O(T·window) memory."""
    T = q.size(-2)
    if (window is None or window >= T) and slopes is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
    if window is not None and (T > BLOCKS_PAST * window or slopes is not None):  # biases: only those a block needs
        return windowed_blocks(q, k, v, window, dropout, slopes)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attention_mask(lags(T, q.device), window, slopes, q.dtype), dropout_p=dropout
    )


BLOCKS_PAST = 8  # a window shorter than an eighth of the sequence is attended block by block


def attention_mask(lag: torch.Tensor, window: int | None, slopes: torch.Tensor | None, dtype) -> torch.Tensor:
    """What sdpa's attn_mask takes for queries and keys `lag` = t − t′ apart: where a query may
    look (0 ≤ lag < window), as booleans, or with ALiBi's slopes as the additive bias −m·lag
    there and −inf elsewhere, (H, Tq, Tk)."""
    reach = (lag >= 0) if window is None else (lag >= 0) & (lag < window)
    if slopes is None:
        return reach
    bias = -slopes.to(dtype)[:, None, None] * lag.to(dtype)
    return bias.masked_fill(~reach, float("-inf"))


class Alibi(nn.Module):
    """ALiBi's head slopes (a buffer, not a parameter) for `n_heads` softmax heads."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.register_buffer("slopes", self.derived_buffers()["slopes"], persistent=False)

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        """The slopes, computed afresh: what a loader that restores no buffers sets them to."""
        return {"slopes": alibi_slopes(self.n_heads)}


def alibi(cfg, n_heads: int) -> Alibi | None:
    """The backbone's `pos: alibi` for a mixer's `n_heads` softmax heads; None under other positions."""
    return Alibi(n_heads) if cfg.pos == "alibi" else None


def slopes_of(alibi: Alibi | None) -> torch.Tensor | None:
    return None if alibi is None else alibi.slopes


def refuse_alibi(cfg, owner: str) -> None:
    """One line for `pos: alibi` on a mixer whose attention does not take it."""
    if cfg.pos == "alibi":
        raise AblateError(
            f"pos alibi applies in the softmax attention of mha, hybrid-heads and based; {owner} takes rope or none"
        )


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's head slopes (Press et al. 2022): the geometric sequence 2^(−8/n), 2^(−16/n), … for n
    a power of two; otherwise those of the power of two below, then every other one of twice it."""

    def powers(n: int) -> list[float]:
        return [2 ** (-8 * (h + 1) / n) for h in range(n)]

    below = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(below) + powers(2 * below)[0::2][: n_heads - below]
    return torch.tensor(slopes, dtype=torch.float64)


def windowed_blocks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dropout: float, slopes: torch.Tensor | None = None
) -> torch.Tensor:
    """Windowed causal attention, `window` queries at a time against the keys they can reach
    (their own block and the `window` − 1 positions before it): the same numbers, without a T × T mask."""
    T, out = q.size(-2), []
    for start in range(0, T, window):
        end, first = min(start + window, T), max(start - window + 1, 0)
        lag = torch.arange(start, end, device=q.device)[:, None] - torch.arange(first, end, device=q.device)[None, :]
        mask = attention_mask(lag, window, slopes, q.dtype)
        block = (t[..., first:end, :] for t in (k, v))
        out.append(F.scaled_dot_product_attention(q[..., start:end, :], *block, attn_mask=mask, dropout_p=dropout))
    return torch.cat(out, dim=-2)


def cached_attention(q: torch.Tensor, cache: dict, slopes: torch.Tensor | None = None) -> torch.Tensor:
    """One query per sequence (B, H, 1, d) against a KV cache whose last key is its own position:
    the keys are 0, 1, … positions behind it, newest last."""
    if slopes is None:
        return F.scaled_dot_product_attention(q, cache["k"], cache["v"])
    behind = torch.arange(cache["k"].size(2) - 1, -1, -1, device=q.device)[None, :]
    return F.scaled_dot_product_attention(
        q, cache["k"], cache["v"], attn_mask=attention_mask(behind, None, slopes, q.dtype)
    )


def kv_cache(
    k: torch.Tensor, v: torch.Tensor, window: int | None = None, cache: dict | None = None
) -> dict[str, torch.Tensor]:
    """The keys and values (B, H, T, d) a decoder keeps, after those of `cache`: all of them, or
    the last `window` (a ring buffer's)."""
    if cache is not None:
        k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
    if window:
        k, v = k[:, :, -window:], v[:, :, -window:]
    return {"k": k, "v": v}


def lags(T: int, device) -> torch.Tensor:
    """(T, T): t − t′ for each query t and key t′ of a sequence of T."""
    return torch.arange(T, device=device)[:, None] - torch.arange(T, device=device)[None, :]


def causal_mask(T: int, window: int | None, device) -> torch.Tensor:
    """(T, T), True where query t may see key t': t - window < t' ≤ t (every t' ≤ t without a window)."""
    return attention_mask(lags(T, device), window, None, None)


def attention_probs(
    q: torch.Tensor, k: torch.Tensor, window: int | None = None, slopes: torch.Tensor | None = None
) -> torch.Tensor:
    """The (B, H, T, T) weights softmax_attention applies, written out (for diagnostics)."""
    mask = attention_mask(lags(q.size(-2), q.device), window, slopes, q.dtype)
    scores = (q @ k.transpose(-1, -2)) / q.size(-1) ** 0.5
    return torch.softmax(scores.masked_fill(~mask, float("-inf")) if slopes is None else scores + mask, dim=-1)


class SwiGLU(nn.Module):
    """FFN (u ⊙ silu(g)) W_out with [u, g] = x W_in: 3·C·F weights."""

    def __init__(self, d_model: int, ffn_dim: int, bias: bool = False):
        super().__init__()
        self.w_in = nn.Linear(d_model, 2 * ffn_dim, bias=bias)
        self.w_out = nn.Linear(ffn_dim, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, g = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(u * F.silu(g))


class MLP(nn.Module):
    """The two-layer MLP, W_out act(x W_in): 2·C·F weights; GELU (GPT-2's, exact) or ReLU²
    (Primer's, as nanochat and modded-nanogpt use it)."""

    def __init__(self, d_model: int, ffn_dim: int, bias: bool = False, act: str = "gelu"):
        super().__init__()
        self.w_in = nn.Linear(d_model, ffn_dim, bias=bias)
        self.w_out = nn.Linear(ffn_dim, d_model, bias=bias)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w_in(x)
        return self.w_out(F.gelu(h) if self.act == "gelu" else F.relu(h).square())


def ffn(kind: str, d_model: int, ffn_dim: int, bias: bool) -> nn.Module:
    """The block's FFN of a ModelConfig's `ffn_type`."""
    return SwiGLU(d_model, ffn_dim, bias) if kind == "swiglu" else MLP(d_model, ffn_dim, bias, act=kind)


class RMSNorm(nn.Module):
    """rms_norm as a module: no weight, as Strawberry has it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x)


def norm(kind: str, width: int, bias: bool) -> nn.Module:
    """The backbone's norm of a ModelConfig's `norm`: a weightless RMS norm, or LayerNorm (with
    its weight, and its bias when asked)."""
    return RMSNorm() if kind == "rms" else nn.LayerNorm(width, bias=bias)


def spread_decays(A_log: nn.Parameter, dt_bias: nn.Parameter) -> None:
    """Per-head decay rates as Mamba-2 starts them, without a random draw: A from 1 to 16 over the
    heads and step sizes from 0.001 to 0.1 (geometric), dt_bias = softplus⁻¹(dt)."""
    H = A_log.numel()
    with torch.no_grad():
        A_log.copy_(torch.linspace(1, 16, H).log())
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(0.1), H))
        dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


class ShortConv(nn.Module):
    """A short causal convolution over time, one kernel per channel (Mamba's, and fla's
    `ShortConvolution`): each channel at t mixes its inputs at t − size + 1 … t. (B, T, C) → (B, T, C);
    with size None it passes its input through (a mixer's convolution switched off)."""

    def __init__(self, channels: int, size: int | None):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, size, groups=channels, padding=size - 1) if size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return x
        return self.conv(x.transpose(1, 2))[..., : x.size(1)].transpose(1, 2)  # left padding only: causal

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(x), and the state a decoder goes on from: the last size − 1 inputs (B, size − 1, C),
        zeros standing in before the first."""
        keep = 0 if self.conv is None else self.conv.kernel_size[0] - 1
        padded = F.pad(x, (0, 0, keep, 0))
        return self(x), padded[:, padded.size(1) - keep :]

    def step(self, x: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward for one new input x (B, 1, C) after those the state `tail` holds."""
        if self.conv is None:
            return x, tail
        window = torch.cat([tail, x], dim=1)  # (B, size, C), oldest first, as the kernel reads them
        y = torch.einsum("bjc,cj->bc", window, self.conv.weight[:, 0]) + self.conv.bias
        return y[:, None], window[:, 1:]

    def reset_parameters(self) -> None:
        """As torch draws a Conv1d (the backbone calls it): the backbone's draw covers matrices
        only, and a zero kernel passes nothing."""
        if self.conv is not None:
            self.conv.reset_parameters()

    def state_size(self) -> int:
        """The last size − 1 inputs of every channel, which a decoder keeps."""
        return 0 if self.conv is None else self.conv.in_channels * (self.conv.kernel_size[0] - 1)

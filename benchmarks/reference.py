"""A bare nanoGPT-style model and training loop, with no framework: the yardstick for ablate's
overhead. It imports nothing from ablate. The model computes what ablate's `mha` model does
(RMS norm without weights, the embedding normed, rotary positions, QK-norm, causal SDPA, SwiGLU,
tied head, Strawberry's uniform initialisation), so at one shape both have the same parameters and FLOPs per token; the loop is
the Strawberry recipe (AdamW, warm-up then cosine, gradient clipping) with nanoGPT's logging and eval.
"""

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Shape:
    vocab_size: int = 8192
    context: int = 256
    d_model: int = 96
    n_layers: int = 4
    n_heads: int = 6
    qkv_dim: int = 384
    ffn_dim: int = 384


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


class Attention(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.n_heads = s.n_heads
        self.qkv = nn.Linear(s.d_model, 3 * s.qkv_dim, bias=False)
        self.out = nn.Linear(s.qkv_dim, s.d_model, bias=False)
        self.qk_gain = nn.Parameter(torch.ones(s.n_heads))  # a learned gain per head on the normed scores
        d = s.qkv_dim // s.n_heads
        angles = torch.outer(torch.arange(s.context).double(), 10000.0 ** (-torch.arange(0, d, 2).double() / d))
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def rotate(self, x):
        T = x.size(-2)
        cos, sin = self.cos[:T], self.sin[:T]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = norm(self.rotate(q)) * self.qk_gain[:, None, None], norm(self.rotate(k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.w_in = nn.Linear(s.d_model, 2 * s.ffn_dim, bias=False)
        self.w_out = nn.Linear(s.ffn_dim, s.d_model, bias=False)

    def forward(self, x):
        u, g = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(u * F.silu(g))


class Block(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.attn, self.mlp = Attention(s), SwiGLU(s)

    def forward(self, x):
        x = x + self.attn(norm(x))
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.embed = nn.Embedding(s.vocab_size, s.d_model)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        for name, p in self.named_parameters():
            if name.endswith("qk_gain"):
                nn.init.ones_(p)
            else:  # every matrix uniform with standard deviation 1/√fan_in
                bound = 3**0.5 * p.size(1) ** -0.5
                nn.init.uniform_(p, -bound, bound)

    def forward(self, idx):
        x = norm(self.embed(idx))
        for block in self.blocks:
            x = block(x)
        return F.linear(norm(x), self.embed.weight)


@dataclass
class Recipe:
    steps: int = 60
    batch_size: int = 16
    lr: float = 2e-3
    betas: tuple = (0.9, 0.99)
    weight_decay: float = 1e-3
    warmup: int = 5
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 30
    eval_batches: int = 3


def get_batch(tokens: np.ndarray, context: int, batch_size: int, rng: np.random.Generator):
    starts = rng.integers(0, len(tokens) - context - 1, size=batch_size)
    chunk = torch.from_numpy(np.stack([tokens[i : i + context + 1] for i in starts]).astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


class Loop:
    """The model, its optimizer and schedule, and the data: `run(n)` trains n steps, as nanoGPT's
    train.py does (loss read back every log_every steps, eval every eval_every)."""

    def __init__(self, s: Shape, r: Recipe, train: np.ndarray, val: np.ndarray, compile: bool = False, seed: int = 0):
        torch.manual_seed(seed)
        self.s, self.r, self.train_tokens = s, r, train
        self.model = GPT(s)
        self.forward = torch.compile(self.model) if compile else self.model
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        rest = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": r.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=r.lr, betas=r.betas)
        self.rng = np.random.default_rng(seed)
        val_rng = np.random.default_rng(0)
        self.val = [get_batch(val, s.context, r.batch_size, val_rng) for _ in range(r.eval_batches)]
        self.step = 0
        self.log = []

    def lr(self, step: int) -> float:
        r = self.r
        if step < r.warmup:
            return r.lr * (step + 1) / r.warmup
        progress = (step - r.warmup) / max(1, r.steps - r.warmup)
        return r.lr * (r.min_lr_ratio + (1 - r.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    @torch.no_grad()
    def estimate_loss(self) -> float:
        self.model.eval()
        losses = [F.cross_entropy(self.forward(x).flatten(0, 1), y.flatten()) for x, y in self.val]
        self.model.train()
        return float(sum(losses)) / len(losses)

    def run(self, n: int) -> None:
        r = self.r
        for _ in range(n):
            for group in self.opt.param_groups:
                group["lr"] = self.lr(self.step)
            x, y = get_batch(self.train_tokens, self.s.context, r.batch_size, self.rng)
            loss = F.cross_entropy(self.forward(x).flatten(0, 1), y.flatten())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.grad_clip)
            self.opt.step()
            self.step += 1
            if self.step % r.log_every == 0:
                self.log.append((self.step, loss.item(), time.perf_counter()))
            if self.step % r.eval_every == 0:
                self.log.append((self.step, self.estimate_loss(), time.perf_counter()))

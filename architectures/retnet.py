"""retnet: multi-scale retention (Sun et al., 2023, arXiv:2307.08621), in its three equivalent forms.

Per head h with decay γ_h = 1 - 2^(-5-h), on rotary-rotated q and k (k scaled by 1/√d):
  parallel    Y = (Q Kᵀ ⊙ D) V,  D_{n,m} = γ^(n-m) for n ≥ m, else 0     O(T²): the definition
  chunkwise   parallel inside chunks, the recurrent state between them     O(T·chunk): training
  recurrent   S_n = γ S_{n-1} + k_nᵀ v_n,  y_n = q_n S_n                   O(T), a loop: decoding
then a group norm per head (no learned weight), a swish gate and the output map. The chunkwise and
recurrent forms are `chunk_simple_gla` and `recurrent_simple_gla` of ablate.nn.ops with the fixed
log decay log γ_h, so the chunkwise form runs fla's kernel where an unset `kernel` of the other
recurrent mixers would (RetNet has no `kernel` option of its own: its studies keep their keys).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ablate.mixers.registry import Mixer, Size, register
from ablate.nn import ops
from ablate.nn.layers import Rotary
from ablate.nn.ops.kernels import run_op


def decays(n_heads: int) -> torch.Tensor:
    return 1 - 2.0 ** (-5 - torch.arange(n_heads, dtype=torch.float64))


def parallel(q, k, v, gamma):
    """The parallel form on (B, T, H, d) heads: each query's weighted sum over the keys up to it."""
    T = q.size(1)
    lag = torch.arange(T, device=q.device)
    lag = lag[:, None] - lag[None, :]
    weights = torch.exp(lag.clamp_min(0) * gamma.log()[:, None, None]).masked_fill(lag < 0, 0.0).to(q.dtype)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return ((q @ k.transpose(-1, -2) * weights) @ v).transpose(1, 2)


@register("retnet")
class MultiScaleRetention(Mixer):
    """RetNet retention: per-head decays, rotary q/k, group norm and swish gate; parallel/chunkwise/recurrent.

    Decays γ_h = 1 − 2^(−5−h). The chunkwise and recurrent forms are simple GLA's ops with the
    fixed log decay (fla's kernel where the other recurrent mixers' unset `kernel` takes it).
    """

    def __init__(
        self,
        cfg,
        layer_idx,
        *,
        form: Literal["parallel", "chunkwise", "recurrent"] = "chunkwise",
        chunk_size: Size = 64,
    ):
        super().__init__()
        self.n_heads, self.form, self.chunk_size = cfg.n_heads, form, chunk_size
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.gate = nn.Linear(cfg.d_model, cfg.qkv_dim, bias=False)
        self.out = nn.Linear(cfg.qkv_dim, cfg.d_model, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.context)
        self.register_buffer("gamma", self.derived_buffers()["gamma"], persistent=False)

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        """The heads' decays, computed afresh: what a loader that restores no buffers sets them to."""
        return {"gamma": decays(self.n_heads)}

    cannot_decode = None

    def heads(self, x: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, ...]:
        """q, k, v as (B, T, H, d) for positions start, start + 1, …: q and k rotated, k scaled by
        1/√d; and the log decay of each head at each position (B, T, H)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q, start), self.rotary(k, start) * k.size(-1) ** -0.5
        g = self.gamma.log().to(torch.promote_types(q.dtype, torch.float32)).expand(B, T, -1)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, g = self.heads(x)
        if self.form == "parallel":
            y = parallel(q, k, v, self.gamma)
        elif self.form == "recurrent":
            y, _ = ops.recurrent_simple_gla(q, k, v, g, scale=1.0)
        else:
            y, _ = run_op(ops.chunk_simple_gla, None, q, k, v, g, scale=1.0, chunk_size=self.chunk_size)
        return self.output(x, y)

    def prefill(self, x):
        """The output, and the recurrent form's state after x: S = Σ_m γ^(T−1−m) k_mᵀ v_m per head."""
        y, state = ops.chunk_simple_gla(*self.heads(x), scale=1.0, output_final_state=True, chunk_size=self.chunk_size)
        return self.output(x, y), state

    def step(self, x, state, pos):
        y, state = ops.recurrent_simple_gla(
            *self.heads(x, pos), scale=1.0, initial_state=state, output_final_state=True
        )
        return self.output(x, y), state

    def output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Group norm of the heads' (B, T, H, d) outputs, the swish gate and the output map."""
        y = F.layer_norm(y, (y.size(-1),))  # group norm: each head normalised on its own
        return self.out(F.silu(self.gate(x)) * y.flatten(2))

    def state_size(self):
        C = self.out.in_features
        return C * (C // self.n_heads)  # one d×d state per head

"""The base of the mixers whose core is one of `ablate.nn.ops` in fla's calling convention, fed
by one projection of x into q, k and v through an optional short causal convolution: the op's
chunked form in training and over a prompt (fla's kernel of the same name where `kernel` says so),
its recurrent form for each decoded token, the convolution's tail and the op's state carried
between them.

A mixer of this kind names its op's two forms (`chunk`, `recurrent`), builds its own layers after
calling this constructor and ends with `self.out`, and says what the op takes (`inputs`); where
it gates or norms the op's output it says so too (`output`).
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ablate.mixers.registry import Mixer
from ablate.nn.layers import ShortConv
from ablate.nn.ops.kernels import run_op


class QKVRecurrent(Mixer):
    chunk: Callable[..., tuple[torch.Tensor, Any]]  # staticmethod(ops.chunk_X)
    recurrent: Callable[..., tuple[torch.Tensor, Any]]  # staticmethod(ops.recurrent_X)
    cannot_decode = None

    def __init__(self, cfg, *, chunk_size: int, conv_size: int | None, kernel: str | None):
        super().__init__()
        self.n_heads, self.chunk_size, self.kernel = cfg.n_heads, chunk_size, kernel
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.qkv_dim, bias=False)
        self.conv = ShortConv(3 * cfg.qkv_dim, conv_size)

    def inputs(self, x: torch.Tensor, mixed: torch.Tensor) -> tuple:
        """The op's positional arguments from x and its convolved projection (B, T, 3·qkv_dim)."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The op's keyword arguments beyond its state's (none by default)."""
        return {}

    def output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """The op's (B, T, H, d) output mapped back to (B, T, d_model)."""
        return self.out(o.flatten(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = self.inputs(x, self.conv(self.qkv(x)))
        o, _ = run_op(self.chunk, self.kernel, *inputs, chunk_size=self.chunk_size, **self.options())
        return self.output(x, o)

    def prefill(self, x):
        mixed, tail = self.conv.prefill(self.qkv(x))
        o, state = self.chunk(
            *self.inputs(x, mixed), output_final_state=True, chunk_size=self.chunk_size, **self.options()
        )
        return self.output(x, o), {"conv": tail, "state": state}

    def step(self, x, state, pos):
        mixed, tail = self.conv.step(self.qkv(x), state["conv"])
        o, s = self.recurrent(
            *self.inputs(x, mixed), initial_state=state["state"], output_final_state=True, **self.options()
        )
        return self.output(x, o), {"conv": tail, "state": s}

    def state_size(self):
        """A d × d state per head, and the convolution's tail."""
        C = self.out.in_features
        return C * (C // self.n_heads) + self.conv.state_size()

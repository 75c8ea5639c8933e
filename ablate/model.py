"""The backbone every variant shares: token (and position) embedding, blocks of mixer + optional
FFN, a final norm and the head. Its switches (positions, norm, tying, biases, FFN type, dropout,
initialisation) are ModelConfig's; a preset sets several at once."""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablate.core.config import ModelConfig
from ablate.core.errors import AblateError
from ablate.mixers import registry
from ablate.nn.layers import ShortConv, ffn, norm
from ablate.nn.loss import linear_cross_entropy


def dropout(cfg: ModelConfig) -> nn.Module:
    """nanoGPT's dropout where the config asks for it; nothing (not even a no-op call) where not."""
    return nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()


class Block(nn.Module):
    """Pre-norm residual block: x + drop(mixer(norm(x))), then x + drop(ffn(norm(x))) unless ffn is off."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.mixer = registry.mixer_class(cfg.mixer)(cfg, layer_idx, **cfg.mixer_options)
        self.norm1 = norm(cfg.norm, cfg.d_model, cfg.norm_bias)
        self.ffn = ffn(cfg.ffn_type, cfg.d_model, cfg.ffn_dim, cfg.bias) if cfg.ffn else None
        self.norm2 = norm(cfg.norm, cfg.d_model, cfg.norm_bias) if cfg.ffn else None
        self.drop = dropout(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.around(x, self.mixer(self.mixer_input(x)))

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer.prefill(self.mixer_input(x))
        return self.around(x, y), state

    def step(self, x: torch.Tensor, state: Any, pos: int) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer.step(self.mixer_input(x), state, pos)
        return self.around(x, y), state

    def mixer_input(self, x: torch.Tensor) -> torch.Tensor:
        """The stream normed, or raw for a mixer that adds its own residual steps."""
        return x if self.mixer.adds_residual else self.norm1(x)

    def around(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The block's output from its input x and its mixer's output y: the residual and the FFN."""
        x = y if self.mixer.adds_residual else x + self.drop(y)
        if self.ffn is not None:
            x = x + self.drop(self.ffn(self.norm2(x)))
        return x

    def residual_maps(self) -> list[nn.Linear]:
        """The maps whose outputs are added to the residual stream: the mixer's, and the FFN's last."""
        return self.mixer.residual_maps() + ([self.ffn.w_out] if self.ffn is not None else [])


BlockObserver = Callable[[int, Block, torch.Tensor, torch.Tensor], None]


class LanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.context, cfg.d_model) if cfg.pos == "learned" else None
        self.embed_norm = norm(cfg.norm, cfg.d_model, cfg.norm_bias) if cfg.embed_norm else None
        self.drop = dropout(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = norm(cfg.norm, cfg.d_model, cfg.norm_bias)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if not self.embed.weight.is_meta:  # a model built only to be measured holds no values to draw
            self.reset_parameters()

    @property
    def head_weight(self) -> torch.Tensor:
        """The output map: the embedding itself when tied."""
        return self.embed.weight if self.head is None else self.head.weight

    def reset_parameters(self) -> None:
        """The draw `cfg.init` names, norms at weight 1 and bias 0, short convolutions as torch
        draws them, then each mixer's own
        `reset_parameters` for what that draw does not suit (gains).

        `seed` (Strawberry's): every matrix of a linear map and every embedding uniform in
        ±√3/√fan_in (standard deviation 1/√fan_in, fan_in its input width), no residual
        scaling; any other parameter (a bias) zero. `gpt2`: N(0, 0.02) for everything but the
        linear maps' biases (zero), the maps each block declares as residual outputs
        (`Block.residual_maps`) at 0.02/√(2·layers). `modern`: Strawberry's draw with the residual
        output maps at zero, as modded-nanogpt and nanochat start them, so that each block starts
        as the identity. (Their head starts at zero too; with it, mha stayed at chance on MQAR
        for 700 steps, docs/backbones.md, so here the head keeps its draw.)"""
        residual = [m for block in self.blocks for m in block.residual_maps()]
        linear = [m for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
        if self.cfg.init == "gpt2":
            scaled = {id(m.weight) for m in residual}
            for p in self.parameters():
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * self.cfg.n_layers) ** 0.5 if id(p) in scaled else 0.02)
            for m in linear:
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        else:
            for p in self.parameters():
                nn.init.zeros_(p)
            for m in linear:
                bound = 3**0.5 * m.weight.size(1) ** -0.5
                nn.init.uniform_(m.weight, -bound, bound)
        if self.cfg.init == "modern":
            for m in residual:
                nn.init.zeros_(m.weight)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm | ShortConv):
                module.reset_parameters()
            if isinstance(module, registry.Mixer):
                module.reset_parameters()

    def embedded(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The stream the first block receives for tokens idx at positions start, start + 1, …"""
        x = self.embed(idx)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(start, start + idx.size(1), device=idx.device))
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.drop(x)

    def hidden(self, idx: torch.Tensor, observe: "BlockObserver | None" = None) -> torch.Tensor:
        """The normed last hidden states, which the head maps to logits. `observe(i, block, x_in,
        x_out)` sees each block's residual stream as the block receives and leaves it: the one
        walk the diagnostics measure, so that they see what the model computes."""
        x = self.embedded(idx)
        for i, block in enumerate(self.blocks):
            y = block(x)
            if observe is not None:
                observe(i, block, x, y)
            x = y
        return self.final_norm(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.linear(self.hidden(idx), self.head_weight)

    def prefill(self, idx: torch.Tensor) -> tuple[torch.Tensor, "Decoding"]:
        """Logits for a prompt idx (B, T), and the decoding state after it."""
        self.check_decodes(idx.size(1))
        x, states = self.embedded(idx), []
        for block in self.blocks:
            x, state = block.prefill(x)
            states.append(state)
        return F.linear(self.final_norm(x), self.head_weight), Decoding(states, idx.size(1))

    def step(self, idx: torch.Tensor, decoding: "Decoding") -> tuple[torch.Tensor, "Decoding"]:
        """Logits for one more token per sequence, idx (B, 1), from the state; and the new state."""
        pos = decoding.length
        self.check_decodes(pos + 1)
        x, states = self.embedded(idx, pos), []
        for block, state in zip(self.blocks, decoding.states):
            x, state = block.step(x, state, pos)
            states.append(state)
        return F.linear(self.final_norm(x), self.head_weight), Decoding(states, pos + 1)

    @property
    def cannot_decode(self) -> str | None:
        """Why the model cannot decode from a state (the first mixer's reason); None when it can."""
        return next((b.mixer.cannot_decode for b in self.blocks if b.mixer.cannot_decode), None)

    def decode_limit(self) -> tuple[int, str] | None:
        """The most positions a decoder can reach and what ends there (the learned position table,
        a mixer's learned biases); None when nothing does."""
        limits = [(b.mixer.decode_limit(), f"{b.mixer.name}'s table of learned biases") for b in self.blocks]
        limits.append((self.cfg.context if self.pos_embed is not None else None, "the learned position table"))
        return min(((n, what) for n, what in limits if n is not None), default=None)

    def state_reach(self) -> tuple[int | float, str | None]:
        """How many positions decoding from the state reaches, and why no further (None: no end). A
        fixed state goes on past the training context; a state that grows with the sequence (a KV
        cache) stops at the context the model was trained at, as do learned tables."""
        if self.cannot_decode:
            return 0, f"{self.cfg.mixer} cannot decode from a state: {self.cannot_decode}"
        limit = self.decode_limit()
        context = self.cfg.context
        if self.state_size() is None and (limit is None or limit[0] > context):
            return context, f"{self.cfg.mixer}'s state grows with the sequence, and it was trained at context {context}"
        return (math.inf, None) if limit is None else (limit[0], f"{limit[1]} ends at position {limit[0]}")

    def check_decodes(self, length: int) -> None:
        """Refuse, in one line, to decode past the limit or from a model that cannot."""
        if self.cannot_decode:
            raise AblateError(f"{self.cfg.mixer} cannot decode from a state: {self.cannot_decode}")
        limit = self.decode_limit()
        if limit is not None and length > limit[0]:
            raise AblateError(f"{limit[1]} ends at position {limit[0]}: this model cannot decode {length} positions")

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; in training the logits are never formed whole."""
        return linear_cross_entropy(self.hidden(idx).flatten(0, 1), self.head_weight, targets.flatten())

    def take_aux_loss(self) -> torch.Tensor | None:
        """The auxiliary losses the mixers set in the last training forward (a router's load
        balance), summed and cleared; None when no mixer has one."""
        losses = []
        for module in self.modules():
            if isinstance(module, registry.Mixer) and module.aux_loss is not None:
                losses.append(module.aux_loss)
                module.aux_loss = None
        return sum(losses) if losses else None

    @property
    def causal(self) -> bool:
        """False when a mixer says it sees the future or other sequences (the audit measures it)."""
        return all(block.mixer.causal for block in self.blocks)

    def state_size(self) -> int | None:
        """Numbers per sequence carried between tokens when decoding, over all layers (None if unbounded)."""
        sizes = [block.mixer.state_size() for block in self.blocks]
        return None if None in sizes else sum(sizes)

    def n_params(self, non_embedding: bool = False) -> int:
        """Every parameter; non_embedding: all but the token and position embeddings and an
        untied head (the embedding-like tables, which grow with the vocabulary and the context)."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.embedding_params() if non_embedding else total

    def embedding_params(self) -> int:
        tables = [self.embed, self.pos_embed, self.head]
        return sum(m.weight.numel() for m in tables if m is not None)


@dataclass(frozen=True)
class Decoding:
    """A decoder's state between tokens: each block's mixer state, and the positions decoded so far."""

    states: list[Any]
    length: int

    def numbers(self) -> int:
        """Numbers per sequence the state holds, over every layer."""
        return sum(registry.state_numbers(state) for state in self.states)


def build_model(cfg: ModelConfig | Mapping[str, Any], device: str | torch.device | None = None) -> LanguageModel:
    """Build the language model a ModelConfig describes; its `cfg` is that config with every
    mixer option's default filled in (each option checked against its type). A mapping of
    ModelConfig's keys, the Python API's convenience, is validated into one first."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig(**cfg)
    cfg = cfg.model_copy(update={"mixer_options": registry.mixer_options(cfg.mixer, cfg.mixer_options)})
    with torch.device(device or "cpu"):
        return LanguageModel(cfg)

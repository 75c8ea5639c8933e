"""The backbone every variant shares: embedding, blocks of mixer + optional FFN, norm, tied head."""

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablate.config import ModelConfig
from ablate.mixers import registry
from ablate.nn.layers import FFNS, rms_norm
from ablate.nn.loss import linear_cross_entropy


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then x + ffn(norm(x)) unless ffn is off."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.mixer = registry.mixer_class(cfg.mixer)(cfg, layer_idx, **cfg.mixer_options)
        self.ffn = FFNS[cfg.ffn_type](cfg.d_model, cfg.ffn_dim) if cfg.ffn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mixer(x) if self.mixer.adds_residual else x + self.mixer(rms_norm(x))
        if self.ffn is not None:
            x = x + self.ffn(rms_norm(x))
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
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The draw `cfg.init` names, then each mixer's own `reset_parameters` for what that draw
        does not suit (gains).

        `seed` (the seed's): every matrix of a linear map and the embedding uniform in ±√3/√fan_in
        (standard deviation 1/√fan_in, fan_in its input width), no residual scaling; any other
        parameter (a position bias) zero. `gpt2`: N(0, 0.02) for everything, the maps each block
        declares as residual outputs (`Block.residual_maps`) at 0.02/√(2·layers)."""
        if self.cfg.init == "seed":
            for p in self.parameters():
                nn.init.zeros_(p)
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    bound = 3**0.5 * module.weight.size(1) ** -0.5
                    nn.init.uniform_(module.weight, -bound, bound)
        else:
            residual = {id(m.weight) for block in self.blocks for m in block.residual_maps()}
            for p in self.parameters():
                std = 0.02 / (2 * self.cfg.n_layers) ** 0.5 if id(p) in residual else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
        for module in self.modules():
            if isinstance(module, registry.Mixer):
                module.reset_parameters()

    def hidden(self, idx: torch.Tensor, observe: "BlockObserver | None" = None) -> torch.Tensor:
        """The normed last hidden states, which the tied head maps to logits. With embed_norm (the
        seed's recipe) the embedding is normed before the first block. `observe(i, block, x_in,
        x_out)` sees each block's residual stream as the block receives and leaves it: the one
        walk the diagnostics measure, so that they see what the model computes."""
        x = self.embed(idx)
        if self.cfg.embed_norm:
            x = rms_norm(x)
        for i, block in enumerate(self.blocks):
            y = block(x)
            if observe is not None:
                observe(i, block, x, y)
            x = y
        return rms_norm(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.linear(self.hidden(idx), self.embed.weight)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; in training the logits are never formed whole."""
        return linear_cross_entropy(self.hidden(idx).flatten(0, 1), self.embed.weight, targets.flatten())

    @property
    def causal(self) -> bool:
        """False when a mixer says it sees the future or other sequences (the audit measures it)."""
        return all(block.mixer.causal for block in self.blocks)

    def state_size(self) -> int | None:
        """Numbers per sequence carried between tokens when decoding, over all layers (None if unbounded)."""
        sizes = [block.mixer.state_size() for block in self.blocks]
        return None if None in sizes else sum(sizes)

    def n_params(self, non_embedding: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.embed.weight.numel() if non_embedding else total


def build_model(cfg: ModelConfig | Mapping[str, Any], device: str | torch.device | None = None) -> LanguageModel:
    """Build the language model a ModelConfig describes; its `cfg` is that config with every
    mixer option's default filled in (each option checked against its type). A mapping of
    ModelConfig's keys, the Python API's convenience, is validated into one first."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig(**cfg)
    cfg = cfg.model_copy(update={"mixer_options": registry.mixer_options(cfg.mixer, cfg.mixer_options)})
    with torch.device(device or "cpu"):
        return LanguageModel(cfg)

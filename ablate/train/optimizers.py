"""What steps a model's parameters: AdamW (or Muon for the blocks' matrices) and the learning-rate
schedule, the same for every variant."""

import math

import torch

from ablate.core.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1; then cosine decay to min_lr_ratio at the last step, or (wsd) 1 until
    the last cooldown_frac of the steps and that cosine decay over them."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    start = cfg.warmup if cfg.schedule == "cosine" else max(cfg.warmup, int((1 - cfg.cooldown_frac) * cfg.steps))
    progress = max(0, step - start) / max(1, cfg.steps - start)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def optimizers(model: torch.nn.Module, cfg: TrainConfig, fused: bool) -> list[torch.optim.Optimizer]:
    """AdamW over every parameter (matrices decayed, vectors not); with `muon`, the blocks'
    matrices go to torch's Muon instead (its update scaled by √max(1, rows/cols), as Keller
    Jordan's Muon and Strawberry's have it) and AdamW keeps the embedding and the vectors."""
    named = list(model.named_parameters())
    to_muon = [p for n, p in named if cfg.optimizer == "muon" and n.startswith("blocks.") and p.dim() == 2]
    chosen = {id(p) for p in to_muon}
    decay = [p for _, p in named if p.dim() >= 2 and id(p) not in chosen]
    no_decay = [p for _, p in named if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
    if not to_muon:
        return [adamw]
    muon = torch.optim.Muon(
        to_muon, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum, adjust_lr_fn="original"
    )
    return [adamw, muon]

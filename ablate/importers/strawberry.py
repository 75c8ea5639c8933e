"""Strawberry's checkpoints as ablate models.

A Strawberry checkpoint is what Strawberry's train.py saves: {"model": state_dict,
"hyperparams": {...}, ...}. Its model is ablate's `retention` at scope `batch` with the FFN on,
so its weights map one to one onto ablate's names and give Strawberry's logits.
"""

from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError
from ablate.core.schema import Metric
from ablate.importers import Imported, weights
from ablate.model import LanguageModel

# Strawberry's hyperparameter → ablate's model key (r_layer goes to the mixer's recurrence)
HYPERPARAMS = {
    "vocab_size": "vocab_size",
    "block_size": "context",
    "n_layer": "n_layers",
    "n_head": "n_heads",
    "n_embd": "d_model",
    "n_qkv": "qkv_dim",
    "n_ffn": "ffn_dim",
}
UNREAD = ("n_experts", "a_experts")  # fields of Strawberry's Config that its model never reads

# a block's weights: Strawberry's name → ablate's, under blocks.N.
BLOCK_WEIGHTS = {
    "retain.oa.weight": "mixer.produce.weight",
    "retain.t.weight": "mixer.transform.weight",
    "retain.w_attn_qkv": "mixer.qkv.weight",
    "retain.w_attn_swiglu": "mixer.sw.weight",
    "retain.w_attn_out": "mixer.out.weight",
    "swiglu.swiglu.weight": "ffn.w_in.weight",
    "swiglu.out.weight": "ffn.w_out.weight",
}


def read_checkpoint(checkpoint: str | Path | dict[str, Any]) -> dict[str, Any]:
    return weights.read(checkpoint, "Strawberry", ("model", "hyperparams"))


def model_config(hyperparams: dict[str, Any], scope: str = "batch") -> dict[str, Any]:
    """ablate's model dict for Strawberry's hyperparameters."""
    known = {*HYPERPARAMS, "r_layer", *UNREAD}
    for key in hyperparams:
        if key not in known:
            raise AblateError(f"unknown Strawberry hyperparameter {key!r}")
    for key in (*HYPERPARAMS, "r_layer"):
        if key not in hyperparams:
            raise AblateError(f"the checkpoint's hyperparams lack {key!r}")
    return {
        "mixer": "retention",
        "mixer_options": {"scope": scope, "recurrence": hyperparams["r_layer"]},
        **{ours: hyperparams[theirs] for theirs, ours in HYPERPARAMS.items()},
        "ffn": True,
        "ffn_type": "swiglu",
    }


def weight_names(n_layers: int) -> dict[str, str]:
    """Strawberry's weight names → ablate's; Strawberry ties its unembedding to the embedding."""
    names = {"embed.weight": "embed.weight", "unembed.weight": "embed.weight"}
    for n in range(n_layers):
        names |= {f"blocks.{n}.{theirs}": f"blocks.{n}.{ours}" for theirs, ours in BLOCK_WEIGHTS.items()}
    return names


def load_strawberry(checkpoint: str | Path | dict[str, Any], *, scope: str = "batch") -> LanguageModel:
    """ablate's model with a Strawberry checkpoint's weights: `model(idx)` gives the Strawberry model's
    logits. The model takes the checkpoint's dtype, so that its weights are the checkpoint's to the
    bit (its rotary tables stay float64, as in every model). `scope` is the published `batch`
    (which leaks across the batch), unless asked otherwise."""
    checkpoint = read_checkpoint(checkpoint)
    config = model_config(checkpoint["hyperparams"], scope)
    return weights.loaded(config, "hyperparams", checkpoint["model"], lambda cfg: weight_names(cfg.n_layers))


def imported(path: Path) -> Imported:
    """A Strawberry checkpoint (scope batch, as published): its model, its hyperparams and step,
    and Strawberry's own last loss estimates (from its leaking forward pass)."""
    checkpoint = read_checkpoint(path)
    stats = checkpoint.get("stats") if isinstance(checkpoint.get("stats"), dict) else {}
    reported = {
        Metric.REPORTED.format(split): weights.number(losses[-1], f"stats.loss.{split}")
        for split, losses in (stats.get("loss") or {}).items()
        if split in ("train", "val") and len(losses)
    }
    step = weights.number(stats.get("step", 0), "stats.step", int)
    return Imported(load_strawberry(checkpoint), {"hyperparams": checkpoint["hyperparams"]}, step, reported, path)

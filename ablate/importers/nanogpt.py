"""nanoGPT's checkpoints as ablate models.

A nanoGPT checkpoint is what its train.py saves: {"model": state_dict, "model_args": {n_layer,
n_head, n_embd, block_size, bias, vocab_size, dropout}, "iter_num", "best_val_loss", ...}. Its
model is ablate's mha on the `nanogpt` preset (learned positions, LayerNorm, a GELU MLP four
times as wide, a tied head, biases per its `bias` flag), so its weights map one to one onto
ablate's names and give nanoGPT's logits.
"""

from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError
from ablate.core.schema import Metric
from ablate.importers import Imported, weights
from ablate.model import LanguageModel

ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")  # dropout too: training only
# a block's parameters: nanoGPT's name → ablate's, under transformer.h.N. and blocks.N.
BLOCK = {
    "ln_1": "norm1",
    "attn.c_attn": "mixer.qkv",
    "attn.c_proj": "mixer.out",
    "ln_2": "norm2",
    "mlp.c_fc": "ffn.w_in",
    "mlp.c_proj": "ffn.w_out",
}


def read_checkpoint(checkpoint: str | Path | dict[str, Any]) -> dict[str, Any]:
    return weights.read(checkpoint, "nanoGPT", ("model", "model_args"))


def model_config(args: dict[str, Any]) -> dict[str, Any]:
    """ablate's model settings for nanoGPT's model_args."""
    for key in ARGS:
        if key not in args:
            raise AblateError(f"the checkpoint's model_args lack {key!r}")
    d = args["n_embd"]
    return {
        "mixer": "mha",
        "preset": "nanogpt",
        "vocab_size": args["vocab_size"],
        "context": args["block_size"],
        "d_model": d,
        "n_layers": args["n_layer"],
        "n_heads": args["n_head"],
        "qkv_dim": d,
        "ffn_dim": 4 * d,
        "bias": args["bias"],
    }


def weight_names(n_layers: int, bias: bool) -> dict[str, str]:
    """nanoGPT's parameter names → ablate's; its lm_head is the token embedding."""
    kinds = ("weight", "bias") if bias else ("weight",)
    names = {
        "transformer.wte.weight": "embed.weight",
        "lm_head.weight": "embed.weight",
        "transformer.wpe.weight": "pos_embed.weight",
        **{f"transformer.ln_f.{kind}": f"final_norm.{kind}" for kind in kinds},
    }
    for n in range(n_layers):
        for theirs, ours in BLOCK.items():
            names |= {f"transformer.h.{n}.{theirs}.{kind}": f"blocks.{n}.{ours}.{kind}" for kind in kinds}
    return names


def load_nanogpt(checkpoint: str | Path | dict[str, Any]) -> LanguageModel:
    """ablate's model with a nanoGPT checkpoint's weights (in the checkpoint's dtype, to the
    bit): `model(idx)` gives nanoGPT's logits at every position."""
    checkpoint = read_checkpoint(checkpoint)
    state = {k: v for k, v in checkpoint["model"].items() if not k.endswith(".attn.bias")}  # a causal mask buffer
    names = lambda cfg: weight_names(cfg.n_layers, cfg.bias)
    return weights.loaded(model_config(checkpoint["model_args"]), "model_args", state, names)


def imported(path: Path) -> Imported:
    """A nanoGPT checkpoint: its model, its model_args and iteration, and its best val loss."""
    checkpoint = read_checkpoint(path)
    best = checkpoint.get("best_val_loss")
    reported = {Metric.REPORTED.format("val"): weights.number(best, "best_val_loss")} if best is not None else {}
    step = weights.number(checkpoint.get("iter_num", 0), "iter_num", int)
    return Imported(load_nanogpt(checkpoint), {"model_args": checkpoint["model_args"]}, step, reported, path)

"""The seed's checkpoints as ablate models.

A Strawberry checkpoint is what the seed's train.py saves: {"model": state_dict,
"hyperparams": {...}, ...}. Its model is ablate's `retention` at scope `batch` with the FFN on,
so its weights map one to one onto ablate's names and give the seed's logits.
"""

import pickle
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ablate.errors import AblateError, first_line
from ablate.model import LanguageModel, build_model

# the seed's hyperparameter → ablate's model key (r_layer goes to the mixer's recurrence)
HYPERPARAMS = {
    "vocab_size": "vocab_size",
    "block_size": "context",
    "n_layer": "n_layers",
    "n_head": "n_heads",
    "n_embd": "d_model",
    "n_qkv": "qkv_dim",
    "n_ffn": "ffn_dim",
}
UNREAD = ("n_experts", "a_experts")  # fields of the seed's Config that its model never reads

# a block's weights: the seed's name → ablate's, under blocks.N.
BLOCK_WEIGHTS = {
    "retain.oa.weight": "mixer.produce.weight",
    "retain.t.weight": "mixer.transform.weight",
    "retain.w_attn_qkv": "mixer.qkv.weight",
    "retain.w_attn_swiglu": "mixer.sw.weight",
    "retain.w_attn_out": "mixer.out.weight",
    "swiglu.swiglu.weight": "ffn.w_in.weight",
    "swiglu.out.weight": "ffn.w_out.weight",
}
COMPILED_PREFIX = "_orig_mod."


def read_checkpoint(checkpoint: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict, from a path (read on the CPU, tensors and plain data only) or as given."""
    if not isinstance(checkpoint, dict):
        try:
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            raise AblateError(f"cannot read the checkpoint {checkpoint}: {first_line(e)}") from e
    for key in ("model", "hyperparams"):
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get(key), dict):
            raise AblateError(f"not a Strawberry checkpoint: it has no {key!r} dict")
    return checkpoint


def model_config(hyperparams: dict[str, Any], scope: str = "batch") -> dict[str, Any]:
    """ablate's model dict for the seed's hyperparameters."""
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


def ablate_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The seed's state dict under ablate's names, checked against ablate's `expected` state dict;
    one-line errors name an unknown, missing, misshapen or untied key."""
    state = {k.removeprefix(COMPILED_PREFIX): v for k, v in state.items()}
    names = {"embed.weight": "embed.weight", "unembed.weight": "embed.weight"}
    for key in expected:
        if key.startswith("blocks."):
            n, ours = key.split(".", 2)[1:]
            names |= {f"blocks.{n}.{theirs}": key for theirs, mine in BLOCK_WEIGHTS.items() if mine == ours}
    for key in state:
        if key not in names:
            raise AblateError(f"unknown key {key!r} in the checkpoint's model")
    for key in names:
        if key not in state:
            raise AblateError(f"the checkpoint's model lacks {key!r}")
        got, want = tuple(state[key].shape), tuple(expected[names[key]].shape)
        if got != want:
            raise AblateError(f"the checkpoint's {key!r} has shape {got}; its hyperparams give {want}")
    if not torch.equal(state["embed.weight"], state["unembed.weight"]):
        raise AblateError("embed.weight and unembed.weight differ; the seed ties them")
    return {names[key]: tensor for key, tensor in state.items()}


def load_strawberry(checkpoint: str | Path | dict[str, Any], *, scope: str = "batch") -> LanguageModel:
    """ablate's model with a Strawberry checkpoint's weights: `model(idx)` gives the seed model's
    logits. The model takes the checkpoint's dtype, so that its weights are the checkpoint's to the
    bit (its rotary tables stay float64, as in every model). `scope` is the published `batch`
    (which leaks across the batch), unless asked otherwise."""
    checkpoint = read_checkpoint(checkpoint)
    try:
        model = build_model(model_config(checkpoint["hyperparams"], scope))
    except ValidationError as e:
        err = e.errors()[0]
        raise AblateError(f"the checkpoint's hyperparams: {err['loc'][0]}: {err['msg']}") from None
    state = ablate_state(checkpoint["model"], model.state_dict())
    model.to(state["embed.weight"].dtype)
    model.load_state_dict(state)
    return model

"""Checkpoints in the seed's format, built by hand: {"model": state_dict, "hyperparams": {...}}."""

import torch

PUBLISHED = {
    "vocab_size": 8192,
    "block_size": 256,
    "n_layer": 2,
    "r_layer": 2,
    "n_head": 6,
    "n_embd": 96,
    "n_qkv": 384,
    "n_ffn": 384,
}


def seed_checkpoint(hyperparams=PUBLISHED, seed=0, dtype=torch.float64, prefix="") -> dict:
    """Random weights under the seed's names and shapes, each drawn as the seed draws it
    (uniform, standard deviation 1/√fan_in); the tied embedding is one tensor under two keys."""
    C, D, F, V = (hyperparams[k] for k in ("n_embd", "n_qkv", "n_ffn", "vocab_size"))
    g = torch.Generator().manual_seed(seed)

    def draw(out_features, in_features):
        bound = 3**0.5 * in_features**-0.5
        return (torch.rand(out_features, in_features, generator=g, dtype=dtype) * 2 - 1) * bound

    embed = draw(V, C)
    state = {"embed.weight": embed}
    for n in range(hyperparams["n_layer"]):
        p = f"blocks.{n}."
        state |= {
            p + "retain.oa.weight": draw(2 * C, C),
            p + "retain.t.weight": draw(5 * D + C, C),
            p + "retain.w_attn_qkv": draw(3 * D, C),
            p + "retain.w_attn_swiglu": draw(2 * C, D),
            p + "retain.w_attn_out": draw(C, C),
            p + "swiglu.swiglu.weight": draw(2 * F, C),
            p + "swiglu.out.weight": draw(C, F),
        }
    state["unembed.weight"] = embed
    state = {prefix + k: v for k, v in state.items()}
    return {"model": state, "hyperparams": dict(hyperparams), "stats": {"step": 0}, "device": "cpu"}

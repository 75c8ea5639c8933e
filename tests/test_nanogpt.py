"""nanoGPT's model in ablate: the `nanogpt` preset loads nanoGPT-layout weights and gives the logits
of GPT-2's formulas, written out here independently (float64), and `ablate import nanogpt` then
`ablate eval` measure a nanoGPT checkpoint beside ablate's own runs."""

import json
import math

import numpy as np
import pytest
import torch

import ablate
from ablate.cli import main
from ablate.core.errors import AblateError

ARGS = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 12, "vocab_size": 40, "dropout": 0.0}


def nanogpt_state(args: dict, seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Random weights under nanoGPT's names and shapes (biases and norm weights random too, so
    that every one of them is checked); the head is the token embedding, one tensor under two keys."""
    g = torch.Generator().manual_seed(seed)
    C, V, T = args["n_embd"], args["vocab_size"], args["block_size"]

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype) * 0.2

    wte = draw(V, C)
    state = {"transformer.wte.weight": wte, "transformer.wpe.weight": draw(T, C), "lm_head.weight": wte}
    layers = {"ln_1": (C,), "attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "ln_2": (C,)}
    layers |= {"mlp.c_fc": (4 * C, C), "mlp.c_proj": (C, 4 * C)}
    for n in range(args["n_layer"]):
        for name, shape in layers.items():
            state[f"transformer.h.{n}.{name}.weight"] = draw(*shape) + (1.0 if name.startswith("ln") else 0.0)
            if args["bias"]:
                state[f"transformer.h.{n}.{name}.bias"] = draw(shape[0])
    state["transformer.ln_f.weight"] = draw(C) + 1.0
    if args["bias"]:
        state["transformer.ln_f.bias"] = draw(C)
    return state


def gpt2_logits(state: dict[str, torch.Tensor], args: dict, idx: torch.Tensor) -> torch.Tensor:
    """GPT-2 from its formulas, position by position: h = wte[x] + wpe[t]; per layer
    h += W_proj·attn(LN₁ h) and h += W_2·gelu(W_1·LN₂ h); logits = wte · LN_f(h)."""
    C, H = args["n_embd"], args["n_head"]
    d = C // H

    def get(name, part="weight"):
        return state.get(f"{name}.{part}")

    def layer_norm(x, name):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        y = (x - mean) / torch.sqrt(var + 1e-5) * get(name)
        return y + get(name, "bias") if get(name, "bias") is not None else y

    def linear(x, name):
        y = x @ get(name).T
        return y + get(name, "bias") if get(name, "bias") is not None else y

    B, T = idx.shape
    h = state["transformer.wte.weight"][idx] + state["transformer.wpe.weight"][:T]
    for n in range(args["n_layer"]):
        p = f"transformer.h.{n}."
        q, k, v = linear(layer_norm(h, p + "ln_1"), p + "attn.c_attn").split(C, dim=-1)
        out = torch.zeros_like(h)
        for b in range(B):
            for t in range(T):
                for head in range(H):
                    cols = slice(head * d, (head + 1) * d)
                    scores = torch.stack([q[b, t, cols] @ k[b, s, cols] / math.sqrt(d) for s in range(t + 1)])
                    weights = torch.softmax(scores, dim=0)
                    out[b, t, cols] = sum(weights[s] * v[b, s, cols] for s in range(t + 1))
        h = h + linear(out, p + "attn.c_proj")
        hidden = linear(layer_norm(h, p + "ln_2"), p + "mlp.c_fc")
        h = h + linear(0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))), p + "mlp.c_proj")
    return layer_norm(h, "transformer.ln_f") @ state["transformer.wte.weight"].T


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_the_nanogpt_preset_gives_gpt2s_logits_from_nanogpt_weights(bias):
    args = {**ARGS, "bias": bias}
    state = nanogpt_state(args)
    model = ablate.load_nanogpt({"model": {"_orig_mod." + k: v for k, v in state.items()}, "model_args": args})
    assert model.cfg.preset == "nanogpt" and model.cfg.pos == "learned" and model.cfg.norm == "layer"
    assert model.cfg.norm_bias == bias and model.embed.weight.dtype == torch.float64
    idx = torch.randint(0, ARGS["vocab_size"], (2, ARGS["block_size"]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(idx)
    torch.testing.assert_close(got, gpt2_logits(state, args, idx), atol=1e-9, rtol=0)
    C = ARGS["n_embd"]  # per layer: 12·C² weights, two norm weights, and 11·C biases with bias
    per_layer = 12 * C * C + 2 * C + (11 * C if bias else 0)
    assert model.n_params() == 40 * C + 12 * C + 2 * per_layer + (2 if bias else 1) * C
    assert model.n_params(non_embedding=True) == 2 * per_layer + (2 if bias else 1) * C


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["model"].pop("transformer.h.1.mlp.c_fc.weight"), "lacks 'transformer.h.1.mlp.c_fc.weight'"),
        (lambda c: c["model_args"].pop("n_embd"), "model_args lack 'n_embd'"),
        (lambda c: c["model"].update({"lm_head.weight": torch.zeros(40, 16)}), "differ; the model ties them"),
        (lambda c: c.pop("model_args"), "not a nanoGPT checkpoint: it has no 'model_args' dict"),
    ],
)
def test_a_damaged_nanogpt_checkpoint_is_a_one_line_error(change, message):
    checkpoint = {"model": nanogpt_state({**ARGS, "bias": False}), "model_args": {**ARGS, "bias": False}}
    change(checkpoint)
    with pytest.raises(AblateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ablate.load_nanogpt(checkpoint)


def test_import_then_eval_measures_a_nanogpt_checkpoint(tmp_path, capsys, own_store):
    args = {**ARGS, "bias": True}
    state = {k: v.float() for k, v in nanogpt_state(args).items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"model": state, "model_args": args, "iter_num": 2000, "best_val_loss": torch.tensor(1.5)}, path)
    store = ["--results", str(tmp_path / "results")]
    assert main(["import", "nanogpt", str(path), *store]) == 0
    out = capsys.readouterr().out
    run_id = out.split(" as run ")[1].split()[0]
    assert "in experiment nanogpt-imports" in out
    tokens = np.random.default_rng(0).integers(0, 40, size=4000).astype(np.uint16)
    tokens.tofile(tmp_path / "val.bin")
    assert main(["eval", run_id, "--data", str(tmp_path / "val.bin"), "--batches", "2", "--json", *store]) == 0
    result = json.loads(capsys.readouterr().out)
    assert math.isfinite(result["val_loss"]) and result["max_leak"] < 1e-5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"best_val_loss": "abc"}, "the checkpoint's best_val_loss must be a number, got 'abc'"),
        ({"iter_num": [1, 2]}, "the checkpoint's iter_num must be a number, got [1, 2]"),
        ({"int64": True}, "the checkpoint's 'embed.weight' is torch.int64: a model's weights are floating point"),
    ],
    ids=["val-loss-text", "step-list", "int64-embeddings"],
)
def test_import_of_a_nanogpt_checkpoint_with_wrong_kinds_of_values_is_one_line(tmp_path, capsys, extra, message):
    args = {**ARGS, "bias": False}
    state = {k: v.float() for k, v in nanogpt_state(args).items()}
    if extra.pop("int64", False):
        for tied in ("transformer.wte.weight", "lm_head.weight"):
            state[tied] = state[tied].long()
    torch.save({"model": state, "model_args": args, **extra}, tmp_path / "ckpt.pt")
    results = tmp_path / "results"
    assert main(["import", "nanogpt", str(tmp_path / "ckpt.pt"), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err == f"ablate: error: {message}" + err.removeprefix(f"ablate: error: {message}") and err.count("\n") == 1
    assert not (results / "mlflow.db").exists()  # read before the store is opened

"""`ablate bench` reports what it documents, and the bare reference model is ablate's mha model."""

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import ablate
from ablate.cli import main
from ablate.plan.flops import ByteCounter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference

TINY = ["--model", "vocab_size=64", "--model", "context=16", "--model", "d_model=16", "--model", "n_heads=2"]
TINY += ["--model", "qkv_dim=16", "--model", "ffn_dim=32", "--model", "n_layers=1", "--batch-size", "2"]
FIELDS = ("tokens_per_s", "ms_per_step", "flops_per_token", "peak_mem_bytes", "achieved_flops_per_s")


def _bench_json(capsys, *args) -> list[dict]:
    assert main(["bench", *TINY, "--steps", "2", "--warmup", "1", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_json_has_the_documented_fields_with_positive_values(capsys):
    rows = _bench_json(capsys, "--variant", "mha", "--variant", "aft-simple")
    assert [r["variant"] for r in rows] == ["mha", "aft-simple"]
    for r in rows:
        assert all(r[k] > 0 for k in (*FIELDS, "peak_flops_per_s", "fraction_of_peak"))
        assert r["achieved_flops_per_s"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"])
        assert r["fraction_of_peak"] == pytest.approx(r["achieved_flops_per_s"] / r["peak_flops_per_s"])
        assert r["ms_per_step"] == pytest.approx(1000 * 2 * 16 / r["tokens_per_s"])  # batch 2 × context 16


def test_bench_sets_the_bytes_moved_against_the_measured_bandwidth(capsys):
    (r,) = _bench_json(capsys, "--variant", "mha")
    assert r["achieved_bytes_per_s"] == pytest.approx(r["bytes_per_token"] * r["tokens_per_s"])
    assert r["fraction_of_bandwidth"] == pytest.approx(r["achieved_bytes_per_s"] / r["stream_bytes_per_s"])
    seconds = max(r["flops_per_token"] / r["peak_flops_per_s"], r["bytes_per_token"] / r["stream_bytes_per_s"])
    assert r["roofline_tokens_per_s"] == pytest.approx(1 / seconds)
    assert r["fraction_of_roofline"] == pytest.approx(r["tokens_per_s"] / r["roofline_tokens_per_s"])
    assert r["bound_by"] == "memory"  # so small a model moves far more than it computes
    assert 1e8 < r["stream_bytes_per_s"] < 1e13


def test_the_byte_counter_counts_each_operations_inputs_and_outputs_and_no_views():
    a, b = torch.empty(4, 8, device="meta"), torch.empty(8, 2, device="meta")
    with ByteCounter() as counter:
        a.view(2, 16).t().unsqueeze(0)  # views move nothing
        a @ b  # reads 32 + 16 floats, writes 8
        torch.exp(a)  # reads 32, writes 32
    assert counter.total == 4 * (32 + 16 + 8 + 32 + 32)


@pytest.mark.slow
def test_bench_parallel_copies_add_up(capsys):
    (row,) = _bench_json(capsys, "--variant", "mha", "--parallel", "2")
    assert row["parallel"] == 2 and row["tokens_per_s"] > 0 and row["speedup_over_single"] > 0


def test_bench_study_variants_at_their_planned_shapes(capsys, tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(
        "name: s\nmodel: {vocab_size: 64, context: 16, d_model: 16, n_heads: 2, qkv_dim: 16, ffn_dim: 32}\n"
        "train: {batch_size: 3}\nvariants:\n  - {name: a, model: {mixer: mha, n_layers: 2}}\n"
        "  - {name: b, model: {mixer: aft-simple, n_layers: 1}}\n"
    )
    assert main(["bench", "--study", str(study), "--variant", "b", "--steps", "1", "--warmup", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["variant"], row["mixer"], row["batch_size"]) == ("b", "aft-simple", 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variant", "nope"], "unknown variant"),
        (["--model", "n_heads=5"], "qkv_dim 384 is not divisible by n_heads 5"),
        (["--model", "width"], "expected KEY=VALUE"),
        (["--model", "d_model=10000000"], "more than the"),
    ],
)
def test_bench_bad_input_is_one_line(capsys, args, message):
    assert main(["bench", *args, "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


DECODE = ["bench", "--decode", *TINY[:-2], "--model", "context=64", "--contexts", "64,128", "--json"]


def test_bench_decode_measures_each_context_and_mhas_cache_is_its_keys_and_values(capsys):
    assert main([*DECODE, "--variant", "mha", "--variant", "gla", "--variant", "aft-full"]) == 0
    mha, gla, aft = json.loads(capsys.readouterr().out)
    for r in (mha, gla):
        assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 and r["stopped"] is None
        assert set(r["ms_per_token"]) == {"64", "128"} and all(ms > 0 for ms in r["ms_per_token"].values())
    # 2 (keys and values) · 1 layer · context · qkv_dim 16 · 4 bytes of float32
    assert mha["state_bytes"] == {"64": 2 * 64 * 16 * 4, "128": 2 * 128 * 16 * 4}
    assert (
        gla["state_bytes"]["64"]
        == gla["state_bytes"]["128"]
        == 4
        * ablate.build_model(
            {"vocab_size": 64, "context": 64, "d_model": 16, "n_heads": 2, "qkv_dim": 16, "n_layers": 1, "mixer": "gla"}
        ).state_size()
    )
    assert set(aft["ms_per_token"]) == {"64"}
    assert aft["stopped"] == "at 128: aft-full's table of learned biases ends at position 64"


def test_decoding_a_model_whose_context_is_shorter_than_the_timed_steps_times_fewer_steps():
    from ablate.inference import cost

    tiny = {"vocab_size": 64, "context": 16, "d_model": 16, "n_heads": 2, "qkv_dim": 16, "n_layers": 1}
    row = cost.measure(ablate.build_model({**tiny, "mixer": "mha", "pos": "learned"}), (16,), steps=32)
    assert row["stopped"] is None and set(row["ms_per_token"]) == {16}
    assert row["state_bytes"][16] == 2 * 16 * 16 * 4  # the cache holds the 16 positions, not more


def test_bench_decode_draws_its_plots(capsys, tmp_path):
    assert main([*DECODE[:-1], "--variant", "aft-simple", "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "ms/token @128" in out and "decode_latency.png" in out
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"decode_latency.png", "decode_state.png"}


@pytest.mark.parametrize("contexts", ["12", "4x", "1k,,2k"])
def test_bench_decode_refuses_contexts_it_cannot_time(capsys, contexts):
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--decode", "--contexts", contexts])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert "--contexts" in err and len(err.strip().splitlines()) == 1


def _train_flops(model: torch.nn.Module, loss) -> float:
    idx = torch.zeros(1, reference.Shape().context, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        loss(model, idx).backward()
    return counter.get_total_flops()


def test_reference_is_ablates_mha_at_the_benchmark_shape():
    """Same parameters, same counted FLOPs per training step, and the same logits from the same weights."""
    shape = reference.Shape()
    mha = {"mixer": "mha", **asdict(shape)}
    with torch.device("meta"):
        bare = reference.GPT(shape)
    ours = ablate.build_model(mha, device="meta")
    assert sum(p.numel() for p in bare.parameters()) == ours.n_params() == 1_818_624 + 4 * 6  # a gain per head
    assert ours.n_params(non_embedding=True) == 1_032_192 + 4 * 6
    bare_flops = _train_flops(bare, lambda m, x: F.cross_entropy(m(x).flatten(0, 1), x.flatten()))
    assert bare_flops == _train_flops(ours, lambda m, x: m.loss(x, x))

    small = reference.Shape(vocab_size=50, context=12, d_model=16, n_layers=2, n_heads=2, qkv_dim=16, ffn_dim=24)
    bare, ours = reference.GPT(small), ablate.build_model({"mixer": "mha", **asdict(small)})
    renamed = {k.replace("mixer.", "attn.").replace("ffn.", "mlp."): v for k, v in ours.state_dict().items()}
    bare.load_state_dict(renamed)
    idx = torch.randint(0, 50, (3, 12))
    torch.testing.assert_close(bare(idx), ours(idx), atol=1e-5, rtol=1e-5)

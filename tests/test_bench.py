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

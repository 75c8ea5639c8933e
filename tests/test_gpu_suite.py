"""benchmarks/gpu_suite.py, the suite a GPU loan runs first: its dry run on the CPU, so that it
cannot rot between loans; its time limits; and its bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"

# A stand-in for a nanoGPT checkout: train.py as nanoGPT's prints its iterations, after checking
# that it was handed bench.py's settings as nanoGPT's configurator takes them.
STAND_IN = """
import sys
given = dict(a[2:].split("=", 1) for a in sys.argv[1:])
assert given["gradient_accumulation_steps"] == "1" and given["dropout"] == "0.0" and given["bias"] == "False"
assert given["compile"] == "False" and given["dtype"] == "float32" and given["device"] == "cpu"
for i in range(int(given["max_iters"]) + 1):
    print(f"iter {i}: loss 6.2000, time {100.0 if i < 3 else 4.0:.2f}ms, mfu 1.00%")
"""


def suite(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(SUITE), *args]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_dry_run_runs_every_part_on_the_cpu_and_writes_its_report(tmp_path):
    nanogpt = tmp_path / "nanoGPT"
    nanogpt.mkdir()
    (nanogpt / "train.py").write_text(STAND_IN)
    done = suite(str(tmp_path / "out"), "--dry-run", "--nanogpt", str(nanogpt))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    parts = report["parts"]
    assert [p["status"] for p in parts.values()] == ["done"] * 5
    gpt2 = parts["1"]["figures"]
    batch, context = gpt2["ablate"]["batch"], 64
    assert gpt2["nanogpt"]["tokens_per_s"] == pytest.approx(batch * context / 0.004)  # the iterations after warm-up
    assert gpt2["ablate_over_nanogpt"] == pytest.approx(
        gpt2["ablate"]["tokens_per_s"] / gpt2["nanogpt"]["tokens_per_s"]
    )
    assert 0 < gpt2["ablate"]["mfu"] < 1
    recipe = parts["2"]["figures"]
    assert recipe["one_trial"]["processes"] == 1 and recipe["packed"]["processes"] == 2
    mixers = parts["3"]["figures"]
    assert {k for k in mixers if k.endswith("@64")} == {"mha@64"} | {
        f"{m}/torch@64" for m in ("linear-attn", "based", "gla", "deltanet", "gated-deltanet", "mamba2", "hgrn")
    }
    assert all(row["tokens_per_s"] > 0 for key, row in mixers.items() if "@" in key)
    decode = parts["4"]["figures"]["mha/batch 4"]
    assert set(decode["ms_per_token"]) == {"64", "128"} and decode["stopped"] is None
    assert set(parts["5"]["figures"]) == {"trial", "1 at once", "2 at once"}
    page = (tmp_path / "out" / "gpu_suite.md").read_text()
    assert "- card: none (CPU)" in page and "## 5. Packing" in page and "| ablate_over_nanogpt |" in page
    assert page.count("| none: a dry run |") == 7  # the targets, judged only on a card


@pytest.mark.slow
def test_a_part_past_its_limit_is_cut_off_and_the_suite_still_reports(tmp_path):
    done = suite(str(tmp_path), "--dry-run", "--parts", "2", "--limit", "2=3", timeout=60)
    assert done.returncode == 1
    part = json.loads((tmp_path / "gpu_suite.json").read_text())["parts"]["2"]
    assert part["status"] == "cut off at its limit of 3 s"
    assert part["seconds"] < 10
    assert "cut off at its limit of 3 s" in (tmp_path / "gpu_suite.md").read_text()


def test_a_folder_that_is_no_nanogpt_checkout_is_refused_in_one_line(tmp_path):
    done = suite(str(tmp_path / "out"), "--dry-run", "--nanogpt", str(tmp_path), timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"gpu_suite: --nanogpt {tmp_path}: no train.py there (a checkout of karpathy/nanoGPT)"
    ]
    assert not (tmp_path / "out").exists()


def test_the_targets_are_judged_from_the_figures_and_a_missing_figure_is_not_measured():
    sys.path.insert(0, str(SUITE.parent))
    import gpu_suite

    parts = {
        1: {"figures": {"ablate": {"mfu": 0.45}, "ablate_over_nanogpt": 0.9}},
        2: {"figures": {"one_trial": {"wall_s": 61.0}}},
        3: {"figures": {"gla/fla@16384": {"tokens_per_s": 3e6}, "gla/torch@16384": {"tokens_per_s": 1e6}}},
    }
    judged = [(value, met) for _, value, met in gpu_suite.targets(parts)]
    assert judged == [(0.45, True), (0.9, False), (61.0, False), (None, None), (3.0, True), (None, None), (None, None)]

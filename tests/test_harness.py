"""lm-evaluation-harness through ablate, offline: two small tasks shipped in tests/lm_eval_tasks
(a multiple-choice one and a perplexity one, read by lm-eval's `json` dataset), scored by the
real harness. Its numbers are known: they equal what ablate's own forward gives for the same
documents, computed here without lm-eval."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

import ablate
from ablate.cli import main
from ablate.core.errors import AblateError
from ablate.data import tokenize
from ablate.inference import harness
from tests.conftest import TINY_DATA, run_ablate, write_study
from tests.test_end_to_end import store_of, trial_runs

TASKS = Path(__file__).parent / "lm_eval_tasks"
DOCS = [line.strip() for line in (TASKS / "ablate_text.jsonl").read_text().splitlines()] * 3


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / f"{name}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A model (drawn, not trained) and its bpe tokenizer, scored on both tasks by lm-eval."""
    folder = tmp_path_factory.mktemp("harness")
    texts = [row["text"] for row in _rows("ablate_text")] + [
        r["context"] + c for r in _rows("ablate_choice") for c in r["choices"]
    ]
    tokenizer = tokenize.bpe(texts * 5, 300)
    tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = {"vocab_size": 300, "context": 128, "d_model": 32, "n_layers": 2, "n_heads": 2, "qkv_dim": 32}
    model = ablate.build_model({**config, "mixer": "gla", "ffn_dim": 64}).eval()
    metrics = harness.lm_eval_scores(model, folder / "tokenizer.json", ["ablate_choice", "ablate_text"], TASKS)
    return model, tokenizer, metrics


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t ≥ 1, from ablate's forward."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).double().log_softmax(-1)[0]
    return logits.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.mark.slow  # runs lm-evaluation-harness's engine (its task index takes seconds to build)
def test_the_perplexity_task_scores_what_ablates_forward_gives(scored):
    """Each document after the end-of-text token that starts documents, all its tokens scored."""
    model, tokenizer, metrics = scored
    start = tokenizer.token_to_id(tokenize.EOT)
    total = words = size = 0.0
    for row in _rows("ablate_text"):
        total += float(_logprobs(model, [start, *tokenizer.encode(row["text"]).ids]).sum())
        words += len(re.split(r"\s+", row["text"]))
        size += len(row["text"].encode())
    assert metrics["lm_eval/ablate_text/word_perplexity"] == pytest.approx(math.exp(-total / words), rel=1e-4)
    assert metrics["lm_eval/ablate_text/byte_perplexity"] == pytest.approx(math.exp(-total / size), rel=1e-4)
    assert metrics["lm_eval/ablate_text/bits_per_byte"] == pytest.approx(-total / size / math.log(2), rel=1e-4)


@pytest.mark.slow  # runs lm-evaluation-harness's engine (its task index takes seconds to build)
def test_the_multiple_choice_task_picks_the_choice_ablates_forward_finds_likelier(scored):
    model, tokenizer, metrics = scored
    right = right_norm = 0
    rows = _rows("ablate_choice")
    for row in rows:
        context = tokenizer.encode(row["context"]).ids
        scores = []
        for choice in row["choices"]:
            whole = tokenizer.encode(row["context"] + choice).ids
            scores.append(float(_logprobs(model, whole)[len(context) - 1 :].sum()))
        right += max(range(2), key=lambda i: scores[i]) == row["answer"]
        right_norm += max(range(2), key=lambda i: scores[i] / len(row["choices"][i])) == row["answer"]
    assert metrics["lm_eval/ablate_choice/acc"] == pytest.approx(right / len(rows))
    assert metrics["lm_eval/ablate_choice/acc_norm"] == pytest.approx(right_norm / len(rows))
    assert not any("stderr" in name for name in metrics)


def test_a_model_without_text_or_that_reads_the_future_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    shape = {"vocab_size": 64, "context": 32, "d_model": 32, "n_layers": 1, "n_heads": 2, "qkv_dim": 32}
    with pytest.raises(AblateError, match="trained on token ids with no tokenizer"):
        harness.lm_eval_scores(ablate.build_model({**shape, "mixer": "mha"}), None, ["ablate_text"], TASKS)
    leaky = ablate.build_model({**shape, "mixer": "retention", "mixer_options": {"scope": "batch"}})
    with pytest.raises(AblateError, match="retention is not causal here"):
        harness.lm_eval_scores(leaky, tmp_path / "tokenizer.json", ["ablate_text"], TASKS)


@pytest.mark.slow  # runs lm-evaluation-harness's engine (its task index takes seconds to build)
def test_an_unknown_task_is_one_line_before_anything_runs(finished, tmp_path, capsys):
    _, results, _ = finished
    run_id = trial_runs(store_of(results), "tiny").iloc[0]["run_id"]
    assert (
        main(["eval", run_id, "--lm-eval", "ablate_choise", "--include-path", str(TASKS), "--results", str(results)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown lm-eval task 'ablate_choise'" in err
    assert main(["eval", run_id, "--lm-eval", "ablate_text", "--data", "x.yaml", "--results", str(results)]) == 2
    assert "not --data: give one of them" in capsys.readouterr().err
    assert main(["eval", run_id, "--limit", "5", "--results", str(results)]) == 2
    assert "--limit and --include-path go with --lm-eval" in capsys.readouterr().err
    study = write_study(tmp_path, "name: x\nvariants: [{name: a}]\neval: {lm_eval: [nosuch]}\n")
    assert main(["run", str(study), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "study.yaml:3: eval: unknown lm-eval task 'nosuch'" in err


EVAL_STUDY = f"""\
name: harnessed
data: {json.dumps(TINY_DATA)}
model: {{context: 64, d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn_dim: 64}}
train: {{steps: 30, batch_size: 8, warmup: 5, eval_every: 15, eval_batches: 2, log_every: 5}}
variants:
  - {{name: mha, model: {{mixer: mha}}}}
  - {{name: gla, model: {{mixer: gla}}}}
seeds: [0, 1, 2]
eval: {{lm_eval: [ablate_choice, ablate_text], include_path: {TASKS}, limit: 6}}
"""


@pytest.mark.slow
def test_a_study_with_eval_scores_every_final_trial_and_compare_reports_the_task_metric(tmp_path):
    study = write_study(tmp_path, EVAL_STUDY)
    results = tmp_path / "results"
    proc = run_ablate("run", str(study), "--results", str(results))
    assert proc.returncode == 0, proc.stderr
    runs = trial_runs(store_of(results), "harnessed")
    assert len(runs) == 6 and runs["metrics.lm_eval/ablate_text/bits_per_byte"].notna().all()
    assert set(runs["metrics.lm_eval/ablate_choice/acc"]) <= {i / 6 for i in range(7)}  # limit: 6 documents
    metric = ["--metric", "lm_eval/ablate_text/bits_per_byte"]
    proc = run_ablate("compare", "--results", str(results), *metric, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["variant"]: row for row in json.loads(proc.stdout)}
    mha = runs[runs["tags.ablate.variant"] == "mha"]["metrics.lm_eval/ablate_text/bits_per_byte"]
    assert rows["mha"]["mean"] == pytest.approx(mha.mean())
    assert rows["gla"]["ci95_low"] < rows["gla"]["mean"] < rows["gla"]["ci95_high"]
    assert "lower is better" in run_ablate("compare", "--results", str(results), *metric).stdout

"""Long-context retrieval tasks (passkey, niah, variable_tracking): the answer is always in the
context and only there, its needle sits at the depth asked, chance is what the guesses without
retrieval score, and the settings that cannot work are refused in one line."""

import numpy as np
import pytest
import torch

from ablate.core.config import TaskConfig
from ablate.core.errors import AblateError
from ablate.data import retrieval
from ablate.data.tasks import IGNORE, TaskData, depths_of, generate
from tests.conftest import write_study
from tests.test_tasks import _oracle

SETTINGS = {
    "passkey": {"task": "passkey"},
    "passkey-text": {"task": "passkey", "haystack": "stdlib", "vocab": 272},
    "niah-single": {"task": "niah"},
    "niah-multikey": {"task": "niah", "needle": "multikey"},
    "niah-multivalue": {"task": "niah", "needle": "multivalue"},
    "niah-multiquery": {"task": "niah", "needle": "multiquery", "num_needles": 3, "needle_len": 3},
    "niah-text": {"task": "niah", "haystack": "stdlib", "vocab": 272, "needle": "multikey"},
    "variable_tracking": {"task": "variable_tracking"},
}


def _val(name: str, seq_len: int = 96, n: int = 200):
    cfg = TaskConfig(seq_len=seq_len, n_val=n, **SETTINGS[name])
    data = TaskData(cfg)
    return cfg, data, *data.val_examples()


@pytest.mark.parametrize("name", SETTINGS)
def test_the_answer_is_in_the_context_and_scored_only_after_the_question(name):
    cfg, _, x, y = _val(name)
    at = retrieval.layout(cfg)
    assert torch.equal(_oracle(cfg, x, y), y)  # read back from the needles before the question
    scored = y != IGNORE
    for row, mask in zip(x.tolist(), scored.tolist()):
        question = row.index(at.query)
        assert not any(mask[:question]) and sum(mask) == _answer_tokens(cfg)
        needles = _needle_spans(cfg, row, question)
        assert len(needles) == _needle_tokens(cfg)  # whole, apart, and all before the question
        assert all(row[t] < at.haystack for t in range(question) if t not in needles)  # the rest is haystack
    assert int(x.max()) < cfg.vocab and int(y[scored].max()) < cfg.vocab


def _answer_tokens(cfg: TaskConfig) -> int:
    if cfg.task == "variable_tracking":
        return cfg.num_hops
    many = cfg.task == "niah" and cfg.needle in ("multivalue", "multiquery")
    return cfg.needle_len * (cfg.num_needles if many else 1)


def _needle_spans(cfg: TaskConfig, row: list[int], question: int) -> set[int]:
    """The positions before the question that its needles (or assignments) cover, from their markers."""
    at = retrieval.layout(cfg)
    size = 3 if cfg.task == "variable_tracking" else 1 + (cfg.task == "niah") + cfg.needle_len
    return {t + k for t in range(question) if row[t] == at.needle for k in range(size)}


def _needle_tokens(cfg: TaskConfig) -> int:
    if cfg.task == "variable_tracking":
        return 3 * cfg.num_chains * cfg.num_hops
    count = 1 if cfg.task == "passkey" or cfg.needle == "single" else cfg.num_needles
    return count * (1 + (cfg.task == "niah") + cfg.needle_len)


@pytest.mark.parametrize("name", ["passkey", "niah-single", "niah-multikey", "niah-multivalue"])
def test_the_asked_needle_sits_at_its_depth(name):
    """Depth d puts the asked needle's start at d of the haystack: 0 opens the sequence, 1 ends
    right before the question (the other needles fall anywhere, multivalue's after the first)."""
    cfg, _, x, _ = _val(name, seq_len=128, n=50)
    at = retrieval.layout(cfg)
    for row, depth in zip(x.tolist(), depths_of(cfg, len(x))):
        question = row.index(at.query)
        needles = [t for t in range(question) if row[t] == at.needle]
        asked = next(t for t in needles if cfg.task == "passkey" or row[t + 1] == row[question + 1])
        room = question - _needle_tokens(cfg)
        before = asked - len({t for t in _needle_spans(cfg, row, question) if t < asked})  # haystack before it
        assert before == round(depth * room)
    assert depths_of(cfg, 7).tolist() == [0, 0.25, 0.5, 0.75, 1, 0, 0.25]


def _most_frequent_digit(cfg, x, y) -> float:
    """The guess without retrieval the chance level states: the digit seen most often so far."""
    at, hits = retrieval.layout(cfg), []
    for i, p in (y != IGNORE).nonzero().tolist():
        seen = x[i, : p + 1]
        counts = torch.bincount(seen[(seen >= at.digit) & (seen < at.digit + 10)] - at.digit, minlength=10)
        best = (counts == counts.max()).nonzero().flatten()
        hits.append(float((best == y[i, p] - at.digit).any()) / len(best))
    return float(np.mean(hits))


@pytest.mark.parametrize("name", ["passkey", "niah-multikey", "passkey-text", "niah-multiquery"])
def test_chance_is_the_most_frequent_digit_and_falls_with_length(name):
    cfg, data, x, y = _val(name)
    assert data.meta.chance_accuracy == pytest.approx(_most_frequent_digit(cfg, x, y))
    scored = y != IGNORE
    overall = int(np.bincount(y[scored].numpy()).argmax())
    assert (y[scored] == overall).float().mean() <= data.meta.chance_accuracy + 0.03  # the most frequent answer
    at = retrieval.layout(cfg)
    uniform = ((y[scored] - at.digit) == torch.randint(0, 10, (int(scored.sum()),))).float().mean()
    assert uniform <= data.meta.chance_accuracy + 0.03  # a digit drawn blind
    longer = TaskData(cfg.model_copy(update={"seq_len": 1024, "n_val": 100}))
    assert 0.1 <= longer.meta.chance_accuracy < data.meta.chance_accuracy


def test_variable_tracking_chance_is_the_first_name_not_yet_written():
    """The guess that knows the format but not the bindings: the names in the order they appear,
    skipping those written. With 2 chains of 4 hops it scores about 0.19; a uniform guess among
    the names not yet written (1/8, 1/7, 1/6, 1/5 for the four answers) and the most recent
    name do worse."""
    cfg, data, x, y = _val("variable_tracking", n=500)
    at, first, recent, uniform = retrieval.layout(cfg), [], [], []
    for i, p in (y != IGNORE).nonzero().tolist():
        row = x[i].tolist()
        question = row.index(at.query)
        names = list(dict.fromkeys(t for t in row[:question] if t >= at.key))  # in order of first appearance
        fresh = [t for t in names if t not in row[question + 2 : p + 1]]
        first.append(fresh[0] == y[i, p])
        recent.append(fresh[-1] == y[i, p])
        uniform.append(1 / len(fresh))
    assert data.meta.chance_accuracy == pytest.approx(float(np.mean(first)))
    assert np.mean(uniform) == pytest.approx((1 / 8 + 1 / 7 + 1 / 6 + 1 / 5) / 4)
    assert np.mean(uniform) < data.meta.chance_accuracy < 0.25 and np.mean(recent) < data.meta.chance_accuracy


def test_examples_follow_their_seed_and_longer_ones_are_their_own_set():
    cfg = TaskConfig(task="niah", seq_len=64, n_val=20)
    a, b = TaskData(cfg), TaskData(cfg)
    assert torch.equal(a.val_examples()[0], b.val_examples()[0])
    long_x, _ = a.val_examples(256)
    assert long_x.shape == (20, 256) and torch.equal(long_x, b.val_examples(256)[0])
    drawn, _ = generate(cfg, np.random.default_rng(0), 20)  # training draws its depths
    assert not torch.equal(drawn, a.val_examples()[0])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"task": "passkey", "depths": [0.5, 1.5]}, "data.depths.1: Input should be less than or equal to 1"),
        ({"task": "passkey", "depths": [-0.1]}, "data.depths.0: Input should be greater than or equal to 0"),
        ({"task": "niah", "seq_len": 64, "eval_seq_lens": [32, 128]}, "eval_seq_lens must be ≥ seq_len (64): got 32"),
        ({"task": "niah", "haystack": "hay.txt", "vocab": 300, "eval_seq_lens": [512]}, "too few for length 512"),
        ({"task": "niah", "haystack": "missing.txt", "vocab": 300}, "missing.txt is not a file"),
        ({"task": "niah", "haystack": "stdlib"}, "with a text haystack needs vocab ≥ 266, got 64"),
        ({"task": "niah", "needle": "multiquery", "seq_len": 32}, "needs seq_len ≥ 57"),
        ({"task": "variable_tracking", "num_keys": 6}, "needs num_keys ≥ num_chains·num_hops = 8"),
    ],
)
def test_bad_retrieval_settings_are_one_line_naming_the_allowed_range(tmp_path, data, message):
    from ablate.plan import study as study_mod

    (tmp_path / "hay.txt").write_text("grass is green. " * 20)
    fields = ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in data.items())
    path = write_study(
        tmp_path,
        f"""\
        name: bad
        data: {{{fields}}}
        model: {{mixer: mha, d_model: 32, n_layers: 1, n_heads: 2}}
        variants: [{{name: mha}}]
        """,
    )
    with pytest.raises(AblateError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        study_mod.load(path)
    assert "\n" not in str(e.value) and "study.yaml" in str(e.value)


def test_a_task_study_scores_its_final_models_at_eval_seq_lens(tmp_path, capsys):
    """Each final trial logs val_accuracy_at/T, val_exact_at/T and each depth's exact match at
    seq_len and every eval_seq_lens; a learned table is not measured past its end (the tag says
    where); `ablate eval --contexts` scores a task run the same way, and compare ranks the lengths."""
    import json

    from ablate.cli import main
    from tests.test_end_to_end import store_of, trial_runs

    study = write_study(
        tmp_path,
        """\
        name: retrieval
        data: {task: passkey, needle_len: 1, seq_len: 32, n_val: 20, eval_seq_lens: [64], depths: [0, 1]}
        model: {d_model: 32, n_layers: 1, n_heads: 2, qkv_dim: 32, ffn: false}
        train: {steps: 6, batch_size: 4, warmup: 1, eval_every: 3}
        variants: [{name: rope, model: {mixer: mha}}, {name: learned, model: {mixer: mha, pos: learned}}]
        """,
    )
    results = tmp_path / "results"
    assert main(["run", str(study), "--results", str(results)]) == 0
    runs = trial_runs(store_of(results), "retrieval").set_index("tags.ablate.variant")
    for name in ("val_accuracy_at/32", "val_exact_at/32", "val_exact_at/32/depth_0", "val_exact_at/32/depth_100"):
        assert runs[f"metrics.{name}"].between(0, 1).all()
    assert 0 <= runs.loc["rope", "metrics.val_exact_at/64"] <= 1 and np.isnan(
        runs.loc["learned", "metrics.val_exact_at/64"]
    )
    assert runs.loc["learned", "tags.ablate.length_stopped"] == "the learned position table ends at position 32"
    depths = runs.loc["rope", ["metrics.val_exact_at/64/depth_0", "metrics.val_exact_at/64/depth_100"]].mean()
    assert depths == pytest.approx(runs.loc["rope", "metrics.val_exact_at/64"])  # half the examples at each depth
    capsys.readouterr()
    run_id = runs.loc["rope", "run_id"]
    assert main(["eval", run_id, "--contexts", "128", "--json", "--results", str(results)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"val_accuracy_at/128", "val_exact_at/128", "val_exact_at/128/depth_0"}
    assert (
        main(["compare", "--metric", "val_exact_at/64", "--format", "json", "--no-report", "--results", str(results)])
        == 0
    )
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["rope"]["n"] == 1 and rows["learned"]["n"] == 0

"""Synthetic tasks as data sources: each isolates one capability, scored only where it shows.

A study selects one with `data: {task: NAME, ...}`. Examples are generated in-process with
numpy from a seed: training batches are drawn fresh every step (an unbounded stream, like
the papers' large training sets; `n_train` fixes a finite set instead), validation
examples are a fixed set of `n_val`. Targets are -100 (ignored) except at the positions a
task scores, so loss and `val_accuracy` measure the capability alone. Token 0 is the
filler. The model's vocabulary and context are the task's `vocab` and `seq_len`.

Tasks (after Zoology, Arora et al. 2023, and MAD, Poli et al. 2024):
- mqar: multi-query associative recall as Zoology generates it. `num_kv_pairs` key-value
  pairs (distinct keys from the lower half of the vocabulary, distinct values from the
  upper), then a query region in which each key appears once, at gaps drawn from Zoology's
  power law (`power_a`); the value after each query key is the target and never an input,
  and every other query-region position holds a random token (`random_non_queries`) or 0.
  One change from Zoology: keys are assigned to the drawn gaps in random order. Zoology
  draws gaps small-first and places the keys in context order, so the order of the queries
  would give their answers away without any recall.
- in_context_recall: a stream of key-value pairs with a per-sequence random mapping from
  `num_keys` keys to distinct values; keys recur, and each value whose key appeared before
  is scored.
- noisy_recall: in_context_recall with noise tokens (their own range of `noise_vocab`)
  inserted between pairs, a fraction `frac_noise` of the sequence.
- fuzzy_recall: in_context_recall whose keys and values are motifs of `k_motif_size` and
  `v_motif_size` tokens; every value token of a recurring key is scored.
- selective_copy: `num_tokens_to_copy` distinct tokens scattered among filler, then a copy
  signal; the model is to write the scattered tokens in order.
- memorization: key-value pairs from one fixed table (drawn from `seed`) shared by every
  sequence, train and val alike: the answers can only come from the weights.
- passkey, niah, variable_tracking: long-context retrieval (`ablate.data.retrieval`), scored at
  `eval_seq_lens` past their training length too (`ablate.inference.lengths.task_scores`).

Each task has a chance level (`chance_accuracy`): the expected val_accuracy of the best
guess that lacks the capability under test, computed exactly on the val set. Recall:
a value of some key seen so far, uniformly (1/keys seen; values are distinct, so no
value is a better guess than another); selective copy: a scattered token not yet
copied (1/tokens left); memorization: the most frequent answer.
"""

import hashlib
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ablate.core.config import TaskConfig
from ablate.core.errors import AblateError, did_you_mean
from ablate.data import retrieval
from ablate.data.meta import DataMeta
from ablate.data.stream import unigram_entropy
from ablate.nn.loss import IGNORE_INDEX as IGNORE

# Each generator returns the sequence of seq_len + 1 tokens and the answers: the token to be
# predicted at each position, IGNORE where none is scored (inputs are tokens[:-1], targets
# answers[1:]). An answer is the next token of the sequence, except in mqar, where it is
# never written into the input.
Generator = Callable[[TaskConfig, np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
# Each task's rules: what it needs of the settings, as the first unmet need in words (None: all met).
Rules = Callable[[TaskConfig], str | None]


@dataclass(frozen=True)
class Task:
    generate: Generator
    rules: Rules
    deep: bool = False  # a needle task: its generator also takes each example's depth (ablate.data.retrieval)


def _mqar_rules(cfg: TaskConfig) -> str | None:
    if 4 * cfg.num_kv_pairs > cfg.seq_len:
        return f"mqar needs seq_len ≥ 4·num_kv_pairs = {4 * cfg.num_kv_pairs}, got {cfg.seq_len}"
    if cfg.num_kv_pairs >= cfg.vocab // 2:
        return f"mqar needs vocab > 2·num_kv_pairs + 1 = {2 * cfg.num_kv_pairs + 1}, got {cfg.vocab}"
    return None


def _mqar(cfg: TaskConfig, rng: np.random.Generator, n: int):
    T, P, V = cfg.seq_len + 1, cfg.num_kv_pairs, cfg.vocab
    space = (T - 1 - 2 * P) // 2  # query slots of two positions each
    gap_p = cfg.power_a * np.arange(1, space + 1) ** (cfg.power_a - 1)
    gap_p /= gap_p.sum()
    tokens = rng.integers(0, V, size=(n, T)) if cfg.random_non_queries else np.zeros((n, T), dtype=np.int64)
    answers = np.full((n, T), IGNORE, dtype=np.int64)
    for i in range(n):
        keys = rng.choice(np.arange(1, V // 2), size=P, replace=False)
        values = rng.choice(np.arange(V // 2, V), size=P, replace=False)
        tokens[i, : 2 * P : 2], tokens[i, 1 : 2 * P : 2] = keys, values
        where = 2 * P + 2 * rng.choice(space, size=P, replace=False, p=gap_p)
        order = rng.permutation(P)
        tokens[i, where] = keys[order]
        answers[i, where + 1] = values[order]
    return tokens, answers


def _pairs_rules(cfg: TaskConfig) -> str | None:
    if 2 * cfg.num_keys + 1 > cfg.vocab:
        return (
            f"{cfg.task} needs vocab ≥ 2·num_keys + 1 (distinct values), got vocab {cfg.vocab}, num_keys {cfg.num_keys}"
        )
    return None


def _noisy_rules(cfg: TaskConfig) -> str | None:
    if 2 * cfg.num_keys + cfg.noise_vocab + 1 > cfg.vocab:
        return f"noisy_recall needs vocab ≥ 2·num_keys + noise_vocab + 1, got {cfg.vocab}"
    return _pairs_rules(cfg)


def _memorization_rules(cfg: TaskConfig) -> str | None:
    if cfg.num_keys + 2 > cfg.vocab:
        return f"memorization needs vocab ≥ num_keys + 2, got vocab {cfg.vocab}, num_keys {cfg.num_keys}"
    return None


def _pairs(cfg: TaskConfig, rng: np.random.Generator, n: int, table: np.ndarray | None = None, noise: bool = False):
    """Key-value pair streams (in_context_recall, noisy_recall, memorization): keys 1..num_keys,
    values above them (and above the noise range), distinct within a sequence, each value
    scored once its key was seen (always, with a fixed table)."""
    T, K, V = cfg.seq_len + 1, cfg.num_keys, cfg.vocab
    low = K + 1 + (cfg.noise_vocab if noise else 0)
    tokens = np.zeros((n, T), dtype=np.int64)
    scored = np.zeros((n, T), dtype=bool)
    for i in range(n):
        mapping = table if table is not None else np.concatenate([[0], rng.choice(np.arange(low, V), K, replace=False)])
        seen, t = set(), 0
        while t < T:
            if noise and rng.random() < cfg.frac_noise:
                tokens[i, t] = rng.integers(K + 1, K + 1 + cfg.noise_vocab)
                t += 1
                continue
            key = int(rng.integers(1, K + 1))
            tokens[i, t] = key
            if t + 1 < T:
                tokens[i, t + 1] = mapping[key]
                scored[i, t + 1] = table is not None or key in seen
            seen.add(key)
            t += 2
    return tokens, np.where(scored, tokens, IGNORE)


def _fuzzy_rules(cfg: TaskConfig) -> str | None:
    if cfg.k_motif_size + cfg.v_motif_size > cfg.seq_len:
        return "fuzzy_recall needs seq_len ≥ k_motif_size + v_motif_size"
    if cfg.num_keys >= cfg.vocab // 2:
        return (
            f"fuzzy_recall needs vocab > 2·num_keys (distinct motifs), got vocab {cfg.vocab}, num_keys {cfg.num_keys}"
        )
    return None


def _fuzzy(cfg: TaskConfig, rng: np.random.Generator, n: int):
    T, K, V, km, vm = cfg.seq_len + 1, cfg.num_keys, cfg.vocab, cfg.k_motif_size, cfg.v_motif_size
    half = V // 2
    tokens = np.zeros((n, T), dtype=np.int64)
    scored = np.zeros((n, T), dtype=bool)
    for i in range(n):  # motif tokens are distinct across keys at each place, so no motif shares a token
        keys = np.stack([rng.choice(np.arange(1, half), K, replace=False) for _ in range(km)], axis=1)
        values = np.stack([rng.choice(np.arange(half, V), K, replace=False) for _ in range(vm)], axis=1)
        seen, t = set(), 0
        while t < T:
            k = int(rng.integers(K))
            pair = np.concatenate([keys[k], values[k]])[: T - t]
            tokens[i, t : t + len(pair)] = pair
            if k in seen:
                scored[i, t + km : t + len(pair)] = True
            seen.add(k)
            t += len(pair)
    return tokens, np.where(scored, tokens, IGNORE)


def _selective_copy_rules(cfg: TaskConfig) -> str | None:
    if 2 * cfg.num_tokens_to_copy + 1 > cfg.seq_len:
        return f"selective_copy needs seq_len ≥ 2·num_tokens_to_copy + 1, got {cfg.seq_len}"
    if cfg.num_tokens_to_copy > cfg.vocab - 2:
        return f"selective_copy needs vocab ≥ num_tokens_to_copy + 2 (distinct tokens), got {cfg.vocab}"
    return None


def _selective_copy(cfg: TaskConfig, rng: np.random.Generator, n: int):
    T, C, V = cfg.seq_len + 1, cfg.num_tokens_to_copy, cfg.vocab
    signal = V - 1
    region = T - C  # scattered tokens and the copy signal at its last position
    tokens = np.zeros((n, T), dtype=np.int64)
    scored = np.zeros((n, T), dtype=bool)
    for i in range(n):
        content = rng.choice(np.arange(1, V - 1), size=C, replace=False)
        where = np.sort(rng.choice(region - 1, size=C, replace=False))
        tokens[i, where] = content
        tokens[i, region - 1] = signal
        tokens[i, region:] = content
        scored[i, region:] = True
    return tokens, np.where(scored, tokens, IGNORE)


def memorization_table(cfg: TaskConfig) -> np.ndarray:
    """The fixed key → value table (index = key; entry 0 unused), from the task's seed."""
    return np.random.default_rng([cfg.seed, 1]).integers(cfg.num_keys + 1, cfg.vocab, size=cfg.num_keys + 1)


TASKS: dict[str, Task] = {  # a new task: its generator and its rules, here
    "mqar": Task(_mqar, _mqar_rules),
    "in_context_recall": Task(_pairs, _pairs_rules),
    "noisy_recall": Task(lambda cfg, rng, n: _pairs(cfg, rng, n, noise=True), _noisy_rules),
    "fuzzy_recall": Task(_fuzzy, _fuzzy_rules),
    "selective_copy": Task(_selective_copy, _selective_copy_rules),
    "memorization": Task(lambda cfg, rng, n: _pairs(cfg, rng, n, table=memorization_table(cfg)), _memorization_rules),
    "passkey": Task(retrieval.needles, retrieval.rules, deep=True),
    "niah": Task(retrieval.needles, retrieval.rules, deep=True),
    "variable_tracking": Task(retrieval.variable_tracking, retrieval.rules),
}


def check(cfg: TaskConfig, base_dir: Path = Path(".")) -> None:
    """Refuse a task that does not exist, or settings it cannot run with (an AblateError naming why)."""
    if cfg.task not in TASKS:
        raise AblateError(f"unknown task {cfg.task!r}{did_you_mean(cfg.task, TASKS)}; tasks: {', '.join(TASKS)}")
    problem = TASKS[cfg.task].rules(retrieval.resolved(cfg, base_dir))
    if problem is not None:
        raise AblateError(problem)


def generate(cfg: TaskConfig, rng: np.random.Generator, n: int, val: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """n examples: inputs (n, seq_len) and targets (n, seq_len), IGNORE where not scored. A
    needle's depth is drawn for training, and spread over `depths` for val (example i at
    depths[i mod len(depths)], `depths_of`)."""
    task = TASKS[cfg.task]
    if task.deep:
        tokens, answers = task.generate(cfg, rng, n, depths_of(cfg, n) if val else rng.random(n))
    else:
        tokens, answers = task.generate(cfg, rng, n)
    return torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(answers[:, 1:].copy())


def depths_of(cfg: TaskConfig, n: int) -> np.ndarray:
    """The needle depth of each of n val examples."""
    return np.resize(np.array(cfg.depths), n)


def chance_accuracy(cfg: TaskConfig, x: torch.Tensor, y: torch.Tensor) -> float:
    """The expected accuracy on (x, y) of the best guess without the tested capability (see the
    module docstring): recall guesses uniformly among the values of the keys seen so far, copy
    among the scattered tokens not yet copied, memorization the most frequent answer."""
    scored = y != IGNORE
    if cfg.task in retrieval.TASKS:
        return retrieval.chance(cfg, x, y)
    if cfg.task == "memorization":
        return float(np.bincount(y[scored].numpy()).max() / scored.sum().item())
    if cfg.task == "mqar":
        return 1.0 / cfg.num_kv_pairs
    if cfg.task == "selective_copy":
        left = cfg.num_tokens_to_copy - (scored.cumsum(dim=1) - 1)
        return float((1.0 / left[scored]).mean())
    key_width = cfg.k_motif_size if cfg.task == "fuzzy_recall" else 1
    guesses = []
    for row, mask in zip(x.tolist(), scored.tolist()):
        keys = _key_starts(cfg, row, key_width)
        guesses += [1.0 / len({k for t, k in keys if t < p}) for p in range(len(row)) if mask[p]]
    return float(np.mean(guesses))


def _key_starts(cfg: TaskConfig, row: list[int], width: int) -> list[tuple[int, tuple]]:
    """(position, key) for every key occurrence in a recall stream (motifs for fuzzy recall)."""
    if cfg.task == "fuzzy_recall":
        size = cfg.k_motif_size + cfg.v_motif_size
        return [(t, tuple(row[t : t + width])) for t in range(0, len(row), size)]
    return [(t, (tok,)) for t, tok in enumerate(row) if 1 <= tok <= cfg.num_keys]


class TaskBatches:
    """Training batches: fresh examples every step from the trial's seed, or draws from a fixed
    set of n_train. `rng` is the state a checkpoint saves."""

    def __init__(self, cfg: TaskConfig, batch_size: int, seed: int, device=None):
        self.cfg, self.batch_size, self.device = cfg, batch_size, device
        self.rng = np.random.default_rng(seed)
        self.fixed = generate(cfg, np.random.default_rng([cfg.seed, 2]), cfg.n_train) if cfg.n_train else None

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fixed is None:
            x, y = generate(self.cfg, self.rng, self.batch_size)
        else:
            rows = torch.from_numpy(self.rng.integers(0, self.cfg.n_train, size=self.batch_size))
            x, y = self.fixed[0][rows], self.fixed[1][rows]
        if self.device is not None:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return x, y


@dataclass
class TaskData:
    """What the Trainer and the runner need of a data source, for a synthetic task."""

    cfg: TaskConfig
    base_dir: Path = Path(".")  # where a haystack file's name starts
    meta: DataMeta = field(init=False)
    tokenizer_path = None  # token ids are the task's own: there is no text to tokenize

    def __post_init__(self):
        self.drawn = retrieval.resolved(self.cfg, self.base_dir)  # the settings examples are drawn with
        x, y = self.val_examples()
        answers = y[y != IGNORE].numpy()
        self.meta = DataMeta(
            source=f"task {self.cfg.task}",
            fingerprint=hashlib.sha256(self.cfg.model_dump_json().encode()).hexdigest()[:16],
            unigram_entropy=unigram_entropy(answers, self.cfg.vocab),
            chance_accuracy=chance_accuracy(self.cfg, x, y),
            python_version=platform.python_version(),
            vocab_size=self.cfg.vocab,
        )

    def describe(self) -> str:
        train = f"{self.cfg.n_train:,} train examples" if self.cfg.n_train else "fresh train examples every step"
        return (
            f"data: task {self.cfg.task} — {train}, {self.cfg.n_val:,} val examples of {self.cfg.seq_len} tokens, "
            f"vocab {self.cfg.vocab}, fingerprint {self.meta.fingerprint}"
        )

    def check_context(self, context: int) -> None:
        """Nothing to check: the plan fits every model's context to the task's seq_len."""

    def val_examples(self, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The n_val val examples, at seq_len or at another length (drawn from their own seed)."""
        if length is None or length == self.cfg.seq_len:
            return generate(self.drawn, np.random.default_rng([self.cfg.seed, 3]), self.cfg.n_val, val=True)
        longer = self.drawn.model_copy(update={"seq_len": length})
        return generate(longer, np.random.default_rng([self.cfg.seed, 3, length]), self.cfg.n_val, val=True)

    def batches(self, context: int, batch_size: int, seed: int, device=None) -> TaskBatches:
        return TaskBatches(self.drawn, batch_size, seed, device)

    def val_batches(self, context: int, batch_size: int, n_batches: int) -> list:
        """Every val example, in batches (n_batches does not apply: the set is fixed by n_val)."""
        x, y = self.val_examples()
        return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]

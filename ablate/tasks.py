"""Synthetic tasks as data sources: each isolates one capability, scored only where it shows.

A study selects one with `data: {task: NAME, ...}`. Examples are generated in-process with
numpy from a seed: training batches are drawn fresh every step (an unbounded stream, like
the papers' large training sets; `n_train` fixes a finite set instead), validation
examples are a fixed set of `n_val`. Targets are -100 (ignored) except at the positions a
task scores, so loss and `val_accuracy` measure the capability alone. Token 0 is the
filler. The model's vocabulary and context are the task's `vocab` and `seq_len`.

Tasks (after Zoology, Arora et al. 2023, and MAD, Poli et al. 2024):
- mqar: multi-query associative recall. `num_kv_pairs` key-value pairs (keys from the
  lower half of the vocabulary, values from the upper), then a region of filler in which
  every key appears once more; the token after each such key is to be its value.
- in_context_recall: a stream of key-value pairs with a per-sequence random mapping from
  `num_keys` keys to values; keys recur, and each value whose key appeared before is scored.
- noisy_recall: in_context_recall with noise tokens (their own range of `noise_vocab`)
  inserted between pairs, a fraction `frac_noise` of the sequence.
- fuzzy_recall: in_context_recall whose keys and values are motifs of `k_motif_size` and
  `v_motif_size` tokens; every value token of a recurring key is scored.
- selective_copy: `num_tokens_to_copy` tokens scattered among filler, then a copy signal;
  the model is to write the scattered tokens in order.
- memorization: key-value pairs from one fixed table (drawn from `seed`) shared by every
  sequence, train and val alike: the answers can only come from the weights.
"""

import hashlib
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ablate.layers import IGNORE_INDEX as IGNORE

TASKS = ("mqar", "in_context_recall", "noisy_recall", "fuzzy_recall", "selective_copy", "memorization")


class TaskConfig(BaseModel):
    """`data:` for a synthetic task (defaults sized for a CPU)."""

    model_config = ConfigDict(extra="forbid")

    task: Literal[TASKS]
    vocab: int = Field(64, ge=16, le=65536)
    seq_len: int = Field(64, ge=8)
    num_kv_pairs: int = Field(4, gt=0, description="mqar: pairs to recall")
    num_keys: int = Field(8, gt=1, description="the recall tasks and memorization: distinct keys")
    noise_vocab: int = Field(8, gt=0, description="noisy_recall: noise tokens")
    frac_noise: float = Field(0.2, ge=0, lt=1, description="noisy_recall: share of the sequence that is noise")
    k_motif_size: int = Field(2, gt=0, description="fuzzy_recall: tokens per key")
    v_motif_size: int = Field(2, gt=0, description="fuzzy_recall: tokens per value")
    num_tokens_to_copy: int = Field(8, gt=0, description="selective_copy: tokens to copy")
    n_train: int | None = Field(None, gt=0, description="a fixed training set of this many; default: fresh every step")
    n_val: int = Field(512, gt=0)
    seed: int = 0

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @model_validator(mode="after")
    def _fits(self):
        T, V = self.seq_len, self.vocab
        if self.task == "mqar":
            if 4 * self.num_kv_pairs > T:
                raise ValueError(f"mqar needs seq_len ≥ 4·num_kv_pairs = {4 * self.num_kv_pairs}, got {T}")
            if self.num_kv_pairs >= V // 2:
                raise ValueError(f"mqar needs vocab > 2·num_kv_pairs + 1 = {2 * self.num_kv_pairs + 1}, got {V}")
        if self.task in ("in_context_recall", "noisy_recall", "memorization") and self.num_keys + 2 > V:
            raise ValueError(f"{self.task} needs vocab ≥ num_keys + 2, got vocab {V}, num_keys {self.num_keys}")
        if self.task == "noisy_recall" and self.num_keys + self.noise_vocab + 2 > V:
            raise ValueError(f"noisy_recall needs vocab ≥ num_keys + noise_vocab + 2, got {V}")
        if self.task == "selective_copy" and 2 * self.num_tokens_to_copy + 1 > T:
            raise ValueError(f"selective_copy needs seq_len ≥ 2·num_tokens_to_copy + 1, got {T}")
        if self.task == "fuzzy_recall" and self.k_motif_size + self.v_motif_size > T:
            raise ValueError("fuzzy_recall needs seq_len ≥ k_motif_size + v_motif_size")
        return self


# Each generator returns a sequence of seq_len + 1 tokens and the mask of the positions whose
# token is to be predicted (so inputs are tokens[:-1], targets tokens[1:] where the mask says).
Generator = Callable[[TaskConfig, np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def _mqar(cfg: TaskConfig, rng: np.random.Generator, n: int):
    T, P, V = cfg.seq_len + 1, cfg.num_kv_pairs, cfg.vocab
    tokens = np.zeros((n, T), dtype=np.int64)
    scored = np.zeros((n, T), dtype=bool)
    for i in range(n):
        keys = rng.choice(np.arange(1, V // 2), size=P, replace=False)
        values = rng.integers(V // 2, V, size=P)
        tokens[i, 0 : 2 * P : 2], tokens[i, 1 : 2 * P : 2] = keys, values
        slots = rng.choice((T - 2 * P) // 2, size=P, replace=False)  # query slots of two positions each
        order = rng.permutation(P)
        where = 2 * P + 2 * slots
        tokens[i, where], tokens[i, where + 1] = keys[order], values[order]
        scored[i, where + 1] = True
    return tokens, scored


def _pairs(cfg: TaskConfig, rng: np.random.Generator, n: int, table: np.ndarray | None = None, noise: bool = False):
    """Key-value pair streams (in_context_recall, noisy_recall, memorization): keys 1..num_keys,
    values above them (and above the noise range), each value scored once its key was seen
    (always, with a fixed table)."""
    T, K, V = cfg.seq_len + 1, cfg.num_keys, cfg.vocab
    low = K + 1 + (cfg.noise_vocab if noise else 0)
    tokens = np.zeros((n, T), dtype=np.int64)
    scored = np.zeros((n, T), dtype=bool)
    for i in range(n):
        mapping = table if table is not None else rng.integers(low, V, size=K + 1)
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
    return tokens, scored


def _fuzzy(cfg: TaskConfig, rng: np.random.Generator, n: int):
    T, K, V, km, vm = cfg.seq_len + 1, cfg.num_keys, cfg.vocab, cfg.k_motif_size, cfg.v_motif_size
    half = V // 2
    tokens = np.zeros((n, T), dtype=np.int64)
    scored = np.zeros((n, T), dtype=bool)
    for i in range(n):
        keys = rng.integers(1, half, size=(K, km))
        values = rng.integers(half, V, size=(K, vm))
        seen, t = set(), 0
        while t < T:
            k = int(rng.integers(K))
            pair = np.concatenate([keys[k], values[k]])[: T - t]
            tokens[i, t : t + len(pair)] = pair
            if k in seen:
                scored[i, t + km : t + len(pair)] = True
            seen.add(k)
            t += len(pair)
    return tokens, scored


def _selective_copy(cfg: TaskConfig, rng: np.random.Generator, n: int):
    T, C, V = cfg.seq_len + 1, cfg.num_tokens_to_copy, cfg.vocab
    signal = V - 1
    region = T - C  # scattered tokens and the copy signal at its last position
    tokens = np.zeros((n, T), dtype=np.int64)
    scored = np.zeros((n, T), dtype=bool)
    for i in range(n):
        content = rng.integers(1, V - 1, size=C)
        where = np.sort(rng.choice(region - 1, size=C, replace=False))
        tokens[i, where] = content
        tokens[i, region - 1] = signal
        tokens[i, region:] = content
        scored[i, region:] = True
    return tokens, scored


def memorization_table(cfg: TaskConfig) -> np.ndarray:
    """The fixed key → value table (index = key; entry 0 unused), from the task's seed."""
    return np.random.default_rng([cfg.seed, 1]).integers(cfg.num_keys + 1, cfg.vocab, size=cfg.num_keys + 1)


def generate(cfg: TaskConfig, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n examples: inputs (n, seq_len) and targets (n, seq_len), IGNORE where not scored."""
    if cfg.task == "mqar":
        tokens, scored = _mqar(cfg, rng, n)
    elif cfg.task == "fuzzy_recall":
        tokens, scored = _fuzzy(cfg, rng, n)
    elif cfg.task == "selective_copy":
        tokens, scored = _selective_copy(cfg, rng, n)
    elif cfg.task == "memorization":
        tokens, scored = _pairs(cfg, rng, n, table=memorization_table(cfg))
    else:
        tokens, scored = _pairs(cfg, rng, n, noise=cfg.task == "noisy_recall")
    targets = np.where(scored, tokens, IGNORE)
    return torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(targets[:, 1:].copy())


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
    meta: dict = field(default_factory=dict)
    tokenizer_path = None  # token ids are the task's own: there is no text to tokenize

    def __post_init__(self):
        _, y = self.val_examples()
        answers = y[y != IGNORE].numpy()
        counts = np.bincount(answers, minlength=self.cfg.vocab)
        p = counts[counts > 0] / counts.sum()
        self.meta = {
            "source": f"task {self.cfg.task}",
            "fingerprint": hashlib.sha256(self.cfg.model_dump_json().encode()).hexdigest()[:16],
            "unigram_entropy": float(-(p * np.log(p)).sum()),
            "python_version": platform.python_version(),
            "vocab_size": self.cfg.vocab,
        }

    def describe(self) -> str:
        train = f"{self.cfg.n_train:,} train examples" if self.cfg.n_train else "fresh train examples every step"
        return (
            f"data: task {self.cfg.task} — {train}, {self.cfg.n_val:,} val examples of {self.cfg.seq_len} tokens, "
            f"vocab {self.cfg.vocab}, fingerprint {self.meta['fingerprint']}"
        )

    def val_examples(self) -> tuple[torch.Tensor, torch.Tensor]:
        return generate(self.cfg, np.random.default_rng([self.cfg.seed, 3]), self.cfg.n_val)

    def batches(self, context: int, batch_size: int, seed: int, device=None) -> TaskBatches:
        return TaskBatches(self.cfg, batch_size, seed, device)

    def val_batches(self, context: int, batch_size: int, n_batches: int) -> list:
        """Every val example, in batches (n_batches does not apply: the set is fixed by n_val)."""
        x, y = self.val_examples()
        return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]

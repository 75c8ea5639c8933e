"""Long-context retrieval tasks: a few facts hidden in a long haystack, asked for at its end.

- passkey (Mohtashami & Jaggi 2023): a number of `needle_len` digits, marked as a needle, at a
  depth in the haystack; at the end the question, and the number is scored digit by digit.
- niah (RULER, Hsieh et al. 2024): needles "key: number"; the question names a key and its
  number is scored. `needle`: single (one needle), multikey (`num_needles` needles of distinct
  keys, one asked for), multivalue (`num_needles` numbers under one key, all asked for, in the
  order they appear) or multiquery (`num_needles` needles, each asked for in turn).
- variable_tracking (RULER): `num_chains` chains of `num_hops` assignments (X1 = 7, X2 = X1, ...),
  interleaved in the haystack; the question gives one chain's value, and every name bound to it is
  scored, in the order of binding.

The haystack (`haystack`) is noise (uniform tokens, the digits among them) or text (the bytes of
'stdlib' or of a text file, read as token ids 0–255, so its digits are ASCII's). Either way the
answers' digits are as common in the haystack as anywhere, so that a model which only counts
tokens learns little. The ids: the haystack's alphabet, then the needle and question markers,
then `num_keys` keys (niah's keys, variable names).

Depth d puts the (first asked) needle's start at d of the haystack, 0 its start, 1 just before
the question. Training examples draw d uniformly; the val examples are spread over `depths`,
and the scores at each depth give the needle heatmap. Variable tracking has no single depth.

Chance (`chance`), the best guess without retrieval, computed exactly on the val set: passkey
and niah, the digit most frequent in the context so far (ties shared), which falls with the
haystack's length (towards 1/10 in noise). Variable tracking, the first name of the context (in
the order they appear) not yet written: it beats a uniform guess among those names, and the
most recent one.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.core.config import TaskConfig
from ablate.core.errors import AblateError
from ablate.data.sources import stdlib_files
from ablate.nn.loss import IGNORE_INDEX as IGNORE

TASKS = ("passkey", "niah", "variable_tracking")
DIGITS = 10
TEXT_BYTES = 8 << 20  # of 'stdlib' read as the haystack text


@dataclass(frozen=True)
class Layout:
    """The token ids of a retrieval task."""

    haystack: int  # ids [0, haystack) fill it
    digit: int  # the first of the ten digits
    needle: int  # marks a needle or an assignment
    query: int  # marks the question
    key: int  # the first of num_keys keys: the last ids


def layout(cfg: TaskConfig) -> Layout:
    if cfg.haystack == "noise":
        size = DIGITS + cfg.noise_vocab
        return Layout(haystack=size, digit=0, needle=size, query=size + 1, key=size + 2)
    return Layout(haystack=256, digit=ord("0"), needle=256, query=257, key=258)


def resolved(cfg: TaskConfig, base_dir: Path) -> TaskConfig:
    """The settings with a haystack text file named from the study's folder."""
    if cfg.haystack in ("noise", "stdlib"):
        return cfg
    return cfg.model_copy(update={"haystack": str((base_dir / cfg.haystack).resolve())})


@functools.cache
def text(haystack: str) -> np.ndarray:
    """The haystack text's bytes (of 'stdlib', its first TEXT_BYTES)."""
    if haystack == "stdlib":
        parts, size = [], 0
        for path in stdlib_files():
            parts.append(path.read_bytes())
            size += len(parts[-1])
            if size >= TEXT_BYTES:
                break
        return np.frombuffer(b"".join(parts)[:TEXT_BYTES], dtype=np.uint8)
    path = Path(haystack)
    if not path.is_file():
        raise AblateError(f"haystack {haystack} is not a file (give noise, stdlib or a text file)")
    return np.frombuffer(path.read_bytes(), dtype=np.uint8)


def rules(cfg: TaskConfig) -> str | None:
    """What a retrieval task needs of its settings (haystack: a text long enough for the longest length)."""
    need = layout(cfg).key + (cfg.num_keys if cfg.task != "passkey" else 0)
    if need > cfg.vocab:
        kind = "noise" if cfg.haystack == "noise" else "text"
        return f"{cfg.task} with a {kind} haystack needs vocab ≥ {need}, got {cfg.vocab}"
    if cfg.task == "variable_tracking" and cfg.num_chains * cfg.num_hops > cfg.num_keys:
        return f"variable_tracking needs num_keys ≥ num_chains·num_hops = {cfg.num_chains * cfg.num_hops}"
    if cfg.task == "niah" and cfg.needle != "multivalue" and _needles(cfg) > cfg.num_keys:
        return f"niah {cfg.needle} needs num_keys ≥ num_needles = {cfg.num_needles}"
    if _facts(cfg) + 1 > cfg.seq_len:
        return f"{cfg.task} needs seq_len ≥ {_facts(cfg) + 1} (its needles and questions), got {cfg.seq_len}"
    if cfg.haystack != "noise":
        longest = max([cfg.seq_len, *(cfg.eval_seq_lens or ())])
        have = text(cfg.haystack).size
        if have < longest:
            return f"the haystack {cfg.haystack} has {have:,} bytes, too few for length {longest}: give ≥ {longest:,}"
    return None


def _needles(cfg: TaskConfig) -> int:
    return 1 if cfg.task == "passkey" or cfg.needle == "single" else cfg.num_needles


def _facts(cfg: TaskConfig) -> int:
    """Tokens of an example that are not haystack (needles, questions and answers), counted on one
    example's facts: the same for every example of the settings."""
    facts = (_chain_facts if cfg.task == "variable_tracking" else _needle_facts)(
        cfg, layout(cfg), np.random.default_rng(0)
    )
    return sum(map(len, facts.pieces)) + len(facts.tail)


@dataclass
class Facts:
    """What an example holds besides its haystack."""

    pieces: list[np.ndarray]  # needles or assignments, cut into the haystack
    tail: np.ndarray  # the questions with their answers, at the end
    scored: np.ndarray  # which tail tokens are answers
    placed: str  # "anywhere" (in order), "first at depth" (the rest anywhere), "in order from depth"


def needles(cfg: TaskConfig, rng: np.random.Generator, n: int, depths: np.ndarray):
    """passkey and niah: n examples, the asked needle of example i at depths[i]."""
    return _examples(cfg, rng, n, depths, _needle_facts)


def variable_tracking(cfg: TaskConfig, rng: np.random.Generator, n: int):
    return _examples(cfg, rng, n, np.zeros(n), _chain_facts)  # its facts are placed anywhere: no depth


def _examples(cfg, rng, n, depths, facts):
    """n sequences of seq_len + 1 tokens: the haystack with the facts cut into it, then the
    questions and their answers; answers scored (IGNORE elsewhere)."""
    T, at = cfg.seq_len + 1, layout(cfg)
    tokens = np.zeros((n, T), dtype=np.int64)
    scored = np.zeros((n, T), dtype=bool)
    for i in range(n):
        f = facts(cfg, at, rng)
        room = T - sum(map(len, f.pieces)) - len(f.tail)
        cuts, pieces = _placed(f, room, float(depths[i]), rng)
        hay = _haystack(cfg, at, rng, room)
        parts, start = [], 0
        for cut, piece in zip(cuts, pieces):
            parts += [hay[start:cut], piece]
            start = cut
        parts += [hay[start:], f.tail]
        tokens[i] = np.concatenate(parts)
        scored[i, T - len(f.tail) :] = f.scored
    return tokens, np.where(scored, tokens, IGNORE)


def _placed(f: Facts, room: int, depth: float, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Where in the haystack (0 to room) each piece goes, in the order they appear."""
    at_depth, rest = round(depth * room), len(f.pieces) - 1
    if f.placed == "anywhere":
        return np.sort(rng.integers(0, room + 1, size=len(f.pieces))), f.pieces
    if f.placed == "in order from depth":
        return np.concatenate([[at_depth], np.sort(rng.integers(at_depth, room + 1, size=rest))]), f.pieces
    cuts = np.concatenate([[at_depth], rng.integers(0, room + 1, size=rest)])
    order = np.argsort(cuts, kind="stable")
    return cuts[order], [f.pieces[j] for j in order]


def _haystack(cfg: TaskConfig, at: Layout, rng: np.random.Generator, size: int) -> np.ndarray:
    if cfg.haystack == "noise":
        return rng.integers(0, at.haystack, size=size)
    corpus = text(cfg.haystack)
    start = int(rng.integers(0, corpus.size - size + 1))
    return corpus[start : start + size].astype(np.int64)


def _needle_facts(cfg: TaskConfig, at: Layout, rng: np.random.Generator) -> Facts:
    """passkey and niah: the needles (the first asked first), and the questions: the one key asked
    (single, multikey), its numbers in the order they appear (multivalue), or each key in turn."""
    count, keyed = _needles(cfg), cfg.task == "niah"
    numbers = [at.digit + rng.integers(0, DIGITS, size=cfg.needle_len) for _ in range(count)]
    if cfg.needle == "multivalue":
        keys = [int(rng.integers(cfg.num_keys))] * count
    else:
        keys = rng.choice(cfg.num_keys, size=count, replace=False).tolist()
    marks = [[at.needle, at.key + k] if keyed else [at.needle] for k in keys]
    pieces = [np.array(m + number.tolist()) for m, number in zip(marks, numbers)]
    tail, scored = [], []
    for q in range(count) if cfg.needle == "multiquery" else [0]:
        ask = [at.query, at.key + keys[q]] if keyed else [at.query]
        said = np.concatenate(numbers) if cfg.needle == "multivalue" else numbers[q]
        tail += ask + said.tolist()
        scored += [False] * len(ask) + [True] * len(said)
    placed = "in order from depth" if cfg.needle == "multivalue" and keyed else "first at depth"
    return Facts(pieces, np.array(tail), np.array(scored), placed)


def _chain_facts(cfg: TaskConfig, at: Layout, rng: np.random.Generator) -> Facts:
    """variable_tracking: the assignments (each chain's in its order, the chains interleaved) and
    the question (the first chain's value) with the names bound to it."""
    values = at.digit + rng.choice(DIGITS, size=cfg.num_chains, replace=False)
    names = (at.key + rng.choice(cfg.num_keys, size=(cfg.num_chains, cfg.num_hops), replace=False)).tolist()
    said = [0] * cfg.num_chains
    pieces = []
    for c in rng.permutation(np.repeat(np.arange(cfg.num_chains), cfg.num_hops)):  # which chain speaks next
        hop = said[c]
        source = int(values[c]) if hop == 0 else names[c][hop - 1]
        pieces.append(np.array([at.needle, names[c][hop], source]))
        said[c] += 1
    tail = np.array([at.query, int(values[0]), *names[0]])
    return Facts(pieces, tail, np.array([False, False] + [True] * cfg.num_hops), "anywhere")


def chance(cfg: TaskConfig, x, y) -> float:
    """The expected accuracy on (x, y) of the best guess without retrieval (see the module docstring)."""
    at, guesses = layout(cfg), []
    for row, target in zip(x.tolist(), y.tolist()):
        for p, truth in enumerate(target):
            if truth == IGNORE:
                continue
            if cfg.task == "variable_tracking":
                start = len(row) - cfg.num_hops  # the question's value: the names follow it
                written = row[start + 1 : p + 1]
                names = [t for t in dict.fromkeys(row[:start]) if t >= at.key and t not in written]
                guesses.append(float(names[0] == truth))
                continue
            seen = np.array(row[: p + 1])
            counts = np.bincount(seen[(seen >= at.digit) & (seen < at.digit + DIGITS)] - at.digit, minlength=DIGITS)
            best = counts == counts.max()
            guesses.append(float(best[truth - at.digit]) / int(best.sum()))
    return float(np.mean(guesses))

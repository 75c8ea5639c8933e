"""The tokenizers ablate makes with HF `tokenizers`: a byte-level BPE trained to the vocabulary
(`bpe`), one token per character (`char`) or per UTF-8 byte (`byte`). Each is made from one pass
over the documents; the tokenizer is saved beside the cache entry and, later, each trained model.
Documents are joined by the end-of-text token where the vocabulary has one (`separator`)."""

import functools
import itertools
from collections.abc import Iterable

import numpy as np

from ablate.core.errors import AblateError

EOT = "<|endoftext|>"
GPT2 = "gpt2"  # data.tokenizer: GPT-2's BPE, through tiktoken


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def separator(tokenizer) -> int | None:
    """The token that ends each document: <|endoftext|> where the vocabulary has it."""
    return tokenizer.token_to_id(EOT)


def bpe(docs: Iterable[str], vocab_size: int):
    """A byte-level BPE trained on the documents, which are joined by <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer)
    return tokenizer


def characters(docs: Iterable[str]) -> list[str]:
    return sorted(set().union(*map(set, docs)))


def char(docs: Iterable[str], vocab_size: int):
    """One token per character: id i is the i-th of the text's sorted distinct characters (as
    nanoGPT's shakespeare_char encodes); documents follow each other without a separator."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = characters(docs)
    if len(chars) > vocab_size:
        raise AblateError(f"data.vocab_size: the text has {len(chars)} distinct characters, more than {vocab_size}")
    tokenizer = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def byte(docs: Iterable[str], vocab_size: int):
    """One token per UTF-8 byte, its value the token id; documents follow each other."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE({char: b for b, char in enumerate(_byte_alphabet())}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _byte_alphabet() -> list[str]:
    """The character the byte-level pre-tokenizer writes for each byte 0..255: printable bytes
    stand for themselves, the others for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


@functools.cache  # converting its 50,000 merges takes a moment, and the plan and the build both ask
def gpt2():
    """GPT-2's tokenizer (50,257 tokens): tiktoken's table, fetched on its first use and cached
    where TIKTOKEN_CACHE_DIR says, as a `tokenizers` BPE."""
    try:
        import tiktoken
    except ImportError:
        raise AblateError('data.tokenizer: gpt2 needs tiktoken: pip install "ablate[data]"') from None
    try:
        encoding = tiktoken.get_encoding(GPT2)
    except Exception as e:  # noqa: BLE001 - a failed download surfaces as whatever requests raised
        raise AblateError(
            f"data.tokenizer: gpt2: tiktoken cannot load GPT-2's table ({type(e).__name__}); offline, point "
            "TIKTOKEN_CACHE_DIR at a folder where it was cached (docs/data.md), or give a tokenizer.json"
        ) from None
    return from_tiktoken(encoding)


def from_tiktoken(encoding):
    """A tiktoken byte-level BPE (GPT-2's pattern) as a `tokenizers` BPE giving the same ids: each
    token's bytes written as the byte-level pre-tokenizer writes them, and the merge that made
    each token recovered from the ranks, lowest first, as BPE made them."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    ranks = encoding._mergeable_ranks
    alphabet = _byte_alphabet()
    written = lambda token: "".join(alphabet[b] for b in token)
    merges = [
        tuple(written(part) for part in _last_merge(token, ranks))
        for token, _ in sorted(ranks.items(), key=lambda item: item[1])
        if len(token) > 1
    ]
    tokenizer = Tokenizer(models.BPE({written(t): r for t, r in ranks.items()}, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    for text, _ in sorted(encoding._special_tokens.items(), key=lambda item: item[1]):
        tokenizer.add_special_tokens([AddedToken(text, special=True)])
    return tokenizer


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts BPE joined into `token`: its bytes merged pair by pair, lowest rank first,
    with the ranks below the token's own, until two parts are left."""
    parts, limit = [bytes([b]) for b in token], ranks[token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, limit), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
        rank, i = min(pairs)
        if rank >= limit:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], b"".join(parts[1:])


TOKENIZERS = {"bpe": bpe, "char": char, "byte": byte}


def start_token(tokenizer) -> int:
    """Where an empty prompt starts: the end-of-text token that separates documents (bpe), or a
    newline where documents follow each other (char, byte), as nanoGPT samples its char models."""
    for token in (EOT, "\n"):
        ids = tokenizer.token_to_id(token) if token == EOT else known_token(tokenizer, token)
        if ids is not None:
            return ids
    raise AblateError("this run's vocabulary has neither an end-of-text token nor a newline: give --prompt")


def known_token(tokenizer, text: str) -> int | None:
    """The one token `text` encodes to, None when the vocabulary lacks it."""
    try:
        ids = tokenizer.encode(text).ids
    except Exception:  # noqa: BLE001 - tokenizers raises a bare Exception where a word-level vocabulary lacks the text
        return None
    return ids[0] if len(ids) == 1 else None

"""The tokenizers ablate makes with HF `tokenizers`: a byte-level BPE trained to the vocabulary
(`bpe`), one token per character (`char`) or per UTF-8 byte (`byte`). Each is made from one pass
over the documents; the tokenizer is saved beside the cache entry and, later, each trained model.
Documents are joined by the end-of-text token where the vocabulary has one (`separator`)."""

from collections.abc import Iterable

import numpy as np

from ablate.errors import AblateError

EOT = "<|endoftext|>"


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


TOKENIZERS = {"bpe": bpe, "char": char, "byte": byte}

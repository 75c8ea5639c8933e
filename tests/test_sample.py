"""Prompts through every tokenizer kind: an empty prompt starts where documents start, and text a
vocabulary cannot hold is one line naming its characters."""

import pytest

from ablate import sample
from ablate.data import tokenize
from ablate.errors import AblateError

DOCS = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n"] * 20


@pytest.fixture(scope="module", params=sorted(tokenize.TOKENIZERS))
def tokenizer(request):
    _, made = tokenize.TOKENIZERS[request.param](DOCS, 300)
    return made


def test_an_empty_prompt_starts_from_the_document_separator_or_a_newline(tokenizer):
    (start,) = sample.prompt_ids(tokenizer, "")
    assert tokenizer.decode([start], skip_special_tokens=False) in (tokenize.EOT, "\n")


def test_a_prompt_of_known_characters_round_trips(tokenizer):
    assert tokenizer.decode(sample.prompt_ids(tokenizer, "def f(x):")) == "def f(x):"


def test_characters_outside_the_vocabulary_are_one_line_or_bytes(tokenizer):
    """A char vocabulary names what it lacks; bpe and byte encode any text as bytes."""
    try:
        ids = sample.prompt_ids(tokenizer, "déf €")
    except AblateError as e:
        assert str(e) == "--prompt has characters this run's vocabulary does not hold: 'é', '€'"
        return
    assert tokenizer.decode(ids) == "déf €"


def test_a_char_vocabulary_without_a_newline_asks_for_a_prompt():
    _, made = tokenize.char(["abc"], 10)
    with pytest.raises(AblateError, match="give --prompt"):
        sample.prompt_ids(made, "")

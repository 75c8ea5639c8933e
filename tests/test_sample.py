"""Prompts through every tokenizer kind: an empty prompt starts where documents start, and text a
vocabulary cannot hold is one line naming its characters. Generation from the model's state
draws what recomputing the forward draws, and hands over to recomputing where the state ends."""

import math

import pytest
import torch

import ablate
from ablate.core.errors import AblateError
from ablate.data import tokenize
from ablate.inference import sample

DOCS = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n"] * 20


@pytest.fixture(scope="module", params=sorted(tokenize.TOKENIZERS))
def tokenizer(request):
    return tokenize.TOKENIZERS[request.param](DOCS, 300)


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
    made = tokenize.char(["abc"], 10)
    with pytest.raises(AblateError, match="give --prompt"):
        sample.prompt_ids(made, "")


SHAPE = {"vocab_size": 64, "context": 32, "d_model": 32, "n_layers": 2, "n_heads": 2, "qkv_dim": 32}
PROMPT = [5, 9, 2, 7, 1]


def _model(**config):
    torch.manual_seed(0)
    return ablate.build_model({**SHAPE, **config}).double().eval()


@pytest.mark.parametrize(
    "mixer, options",
    [("mha", {}), ("gla", {}), ("retention", {"chunk_size": 8}), ("aft-local", {"window": 8}), ("hybrid", {})],
)
def test_decoding_from_state_draws_what_recomputing_draws(mixer, options):
    model = _model(mixer=mixer, mixer_options=options)
    n = SHAPE["context"] - len(PROMPT)
    for temperature in (0.0, 1.0):
        from_state = sample.generate(model, PROMPT, n, temperature, None, seed=3)
        assert from_state == sample.generate(model, PROMPT, n, temperature, None, seed=3, recompute=True)


def test_a_fixed_state_decodes_past_the_context_and_a_growing_one_hands_over_to_recomputing():
    gla = _model(mixer="gla")
    assert gla.state_reach() == (math.inf, None)
    assert len(sample.generate(gla, PROMPT, 40, 1.0, None, seed=0)) == 40
    mha = _model(mixer="mha")
    assert mha.state_reach() == (32, "mha's state grows with the sequence, and it was trained at context 32")
    past = sample.generate(mha, PROMPT, 40, 0.0, None, seed=0)
    assert past == sample.generate(mha, PROMPT, 40, 0.0, None, seed=0, recompute=True)  # within it from state
    long_prompt = list(range(40))  # longer than the context: recomputed over its last 32, as before
    assert sample.generate(mha, long_prompt, 3, 0.0, None, 0) == sample.generate(
        mha, long_prompt, 3, 0.0, None, 0, True
    )
    assert _model(mixer="gla", pos="learned").state_reach()[0] == 32
    assert "cannot decode" in _model(mixer="retention", mixer_options={"scope": "batch"}).state_reach()[1]

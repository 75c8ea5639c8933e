"""`ablate sample`: text from a finished run's model, loaded from its MLflow artifacts.

Each final trial logs `model/config.json` (its ModelConfig), `model/weights.pt` and, for text
corpora, `model/tokenizer.json`. Generation decodes from the model's state: the prompt in one
forward, then one step per token, each giving the logits the full forward gives (the mixer
contract's `decode` rule). `--recompute` (and any position past what the state reaches) runs the
forward over the last `context` tokens for every new token instead.
"""

import tempfile
from pathlib import Path

import torch

from ablate.core.config import ModelConfig
from ablate.core.errors import AblateError
from ablate.data.tokenize import known_token, start_token
from ablate.model import LanguageModel, build_model

ARTIFACTS = "model"


def save(run, model: LanguageModel, cfg: ModelConfig, tokenizer: Path | None) -> None:
    """Log what `load` needs as artifacts of the run."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(cfg.model_dump_json(indent=2))
        torch.save(model.state_dict(), folder / "weights.pt")
        if tokenizer is not None:
            (folder / "tokenizer.json").write_bytes(tokenizer.read_bytes())
        run.artifacts(folder, ARTIFACTS)


def load(client, run_id: str, folder: Path):
    """The run's model (eval mode, on the CPU) and its tokenizer (None for token-array data)."""
    from mlflow.exceptions import MlflowException
    from tokenizers import Tokenizer

    try:
        client.get_run(run_id)
    except MlflowException:
        raise AblateError(f"no run {run_id!r} in this store") from None
    names = {Path(a.path).name for a in client.list_artifacts(run_id, ARTIFACTS)}
    if not {"config.json", "weights.pt"} <= names:
        raise AblateError(f"run {run_id} has no saved model: only finished final trials keep theirs")
    local = Path(client.download_artifacts(run_id, ARTIFACTS, str(folder)))
    model = build_model(ModelConfig.model_validate_json((local / "config.json").read_text()))
    model.load_state_dict(torch.load(local / "weights.pt", map_location="cpu", weights_only=True))
    tokenizer = Tokenizer.from_file(str(local / "tokenizer.json")) if (local / "tokenizer.json").exists() else None
    return model.eval(), tokenizer


def tokenizer_file(folder: Path) -> Path | None:
    """The tokenizer file `load` downloaded into `folder` (None for token-array data)."""
    path = folder / ARTIFACTS / "tokenizer.json"
    return path if path.is_file() else None


@torch.inference_mode()  # a model loaded to sample from: no autograd bookkeeping (10% of a decoding step)
def generate(
    model: LanguageModel,
    prompt: list[int],
    n: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    recompute: bool = False,
) -> list[int]:
    """n tokens after the prompt, each drawn from softmax(logits / temperature) over the top_k
    most likely (all when None); temperature 0 takes the most likely token.

    Decoded from the model's state: the prompt in one forward (prefill), then one step per
    token. Past the state's reach (`LanguageModel.state_reach`), or everywhere with `recompute`, each token
    recomputes the forward over the last `context` tokens instead."""
    generator = torch.Generator().manual_seed(seed)
    reach = 0 if recompute else model.state_reach()[0]
    ids, decoding = list(prompt), None
    for _ in range(n):
        if len(ids) > reach:
            logits = model(torch.tensor([ids[-model.cfg.context :]]))
        elif decoding is None:
            logits, decoding = model.prefill(torch.tensor([ids]))
        else:
            logits, decoding = model.step(torch.tensor([ids[-1:]]), decoding)
        ids.append(draw(logits[0, -1].double(), temperature, top_k, generator))
    return ids[len(prompt) :]


def draw(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    """A token from the logits of one position."""
    if temperature == 0:
        return int(logits.argmax())
    if top_k is not None and top_k < logits.numel():
        cutoff = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < cutoff, float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's tokens; an empty prompt starts from the end-of-text token, as documents do."""
    if tokenizer is None:
        try:
            ids = [int(t) for t in prompt.split()]
        except ValueError:
            raise AblateError(
                "this run's data is a token array, with no tokenizer: give --prompt as token ids"
            ) from None
    elif not prompt:
        ids = [start_token(tokenizer)]
    else:
        ids = _encoded(tokenizer, prompt)
    if not ids:
        raise AblateError(f"--prompt {prompt!r} gives no tokens to start from")
    return ids


def _encoded(tokenizer, prompt: str) -> list[int]:
    """The prompt's tokens; one line naming the characters a char vocabulary does not hold."""
    try:
        return tokenizer.encode(prompt).ids
    except Exception:  # noqa: BLE001 - a bare Exception from tokenizers, naming no character: find them
        missing = sorted({c for c in prompt if known_token(tokenizer, c) is None})
        shown = ", ".join(repr(c) for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise AblateError(f"--prompt has characters this run's vocabulary does not hold: {shown}") from None

"""`ablate sample`: text from a finished run's model, loaded from its MLflow artifacts.

Each final trial logs `model/config.json` (its ModelConfig), `model/weights.pt` and, for text
corpora, `model/tokenizer.json`. Generation recomputes the forward pass over the last
`context` tokens for every new token, so every mixer, a chunked retention included, sees its
input exactly as in training: the same model, the same chunking from the window's start.
"""

import tempfile
from pathlib import Path

import torch

from ablate.config import ModelConfig
from ablate.data.tokenize import EOT
from ablate.errors import AblateError
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


@torch.no_grad()
def generate(
    model: LanguageModel, prompt: list[int], n: int, temperature: float, top_k: int | None, seed: int
) -> list[int]:
    """n tokens after the prompt, each drawn from softmax(logits / temperature) over the top_k
    most likely (all when None); temperature 0 takes the most likely token."""
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt)
    for _ in range(n):
        window = torch.tensor([ids[-model.cfg.context :]])
        logits = model(window)[0, -1].double()
        if temperature == 0:
            ids.append(int(logits.argmax()))
            continue
        if top_k is not None and top_k < logits.numel():
            cutoff = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < cutoff, float("-inf"))
        probs = torch.softmax(logits / temperature, dim=-1)
        ids.append(int(torch.multinomial(probs, 1, generator=generator)))
    return ids[len(prompt) :]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's tokens; an empty prompt starts from the end-of-text token, as documents do."""
    if tokenizer is None:
        try:
            ids = [int(t) for t in prompt.split()]
        except ValueError:
            raise AblateError(
                "this run's data is a token array, with no tokenizer: give --prompt as token ids"
            ) from None
    else:
        ids = tokenizer.encode(prompt).ids if prompt else [tokenizer.token_to_id(EOT)]
    if not ids:
        raise AblateError(f"--prompt {prompt!r} gives no tokens to start from")
    return ids

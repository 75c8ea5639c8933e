"""A Hugging Face model folder for an ablate model, and back.

The folder holds what `from_pretrained` reads: config.json (model_type `ablate`, with an `auto_map`
to the two small code files beside it, which `trust_remote_code=True` runs and which import the
installed ablate), model.safetensors, the tokenizer as transformers reads it (where the model has
one) and a README model card. It is written beside its destination and moved there whole, so that
a failed export leaves nothing half-written.
"""

import json
import shutil
import tempfile
from pathlib import Path

import torch

from ablate.errors import AblateError
from ablate.hf.modeling import MODEL_TYPE, AblateForCausalLM
from ablate.model import LanguageModel

WEIGHTS = "model.safetensors"
REMOTE_CODE = {
    "configuration_ablate.py": '"""The configuration of an ablate model: `pip install ablate[hf]` provides it."""\n\n'
    "from ablate.hf.modeling import AblateConfig\n\n__all__ = ['AblateConfig']\n",
    "modeling_ablate.py": '"""An ablate model as a transformers causal LM: `pip install ablate[hf]` provides it."""\n\n'
    "from ablate.hf.modeling import AblateForCausalLM\n\n__all__ = ['AblateForCausalLM']\n",
}
AUTO_MAP = {
    "AutoConfig": "configuration_ablate.AblateConfig",
    "AutoModelForCausalLM": "modeling_ablate.AblateForCausalLM",
}


def export(client, run_id: str, folder: Path, force: bool) -> None:
    """The run's saved model (a finished final trial's or an import's) as a folder at `folder`."""
    from ablate import sample
    from ablate.hf.card import card

    check_destination(folder, force)
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = sample.load(client, run_id, Path(tmp))
        write(model, sample.tokenizer_file(Path(tmp)), folder, card(client.get_run(run_id), folder.name), force)


def check_destination(folder: Path, force: bool) -> None:
    """Refuse, in one line, a destination that holds files (unless forced) or is not a folder."""
    if folder.exists() and not folder.is_dir():
        raise AblateError(f"{folder} is a file, not a folder to export into")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise AblateError(f"{folder} is not empty: give --force to replace what it holds")


def write(model: LanguageModel, tokenizer: Path | None, folder: Path, card: str, force: bool = False) -> None:
    """The model's folder at `folder`: written in a sibling folder first, then moved into place."""
    check_destination(folder, force)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        staged = Path(tmp) / "model"
        hf = AblateForCausalLM.wrapping(model)
        hf.config.auto_map = AUTO_MAP
        hf.save_pretrained(staged)
        for name, code in REMOTE_CODE.items():
            (staged / name).write_text(code)
        if tokenizer is not None:
            hf_tokenizer(tokenizer, model.cfg.context).save_pretrained(staged)
        (staged / "README.md").write_text(card)
        if folder.exists():
            shutil.rmtree(folder)
        staged.rename(folder)


def hf_tokenizer(path: Path, context: int):
    """ablate's tokenizer file as a transformers tokenizer: documents start after the end-of-text
    token (bpe) or a newline (char, byte), its bos; the end-of-text token, where there is one, its eos."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from ablate.data.tokenize import EOT
    from ablate.sample import start_token

    tokens = Tokenizer.from_file(str(path))
    special = {"bos_token": tokens.id_to_token(start_token(tokens))}
    if tokens.token_to_id(EOT) is not None:
        special["eos_token"] = EOT
    return PreTrainedTokenizerFast(tokenizer_object=tokens, model_max_length=context, **special)


def read(folder: Path) -> tuple[LanguageModel, Path | None]:
    """The model an exported folder holds (float32, eval mode), checked as `ablate import` checks
    every checkpoint: its config first, the weights' shapes on a model that holds no memory, no
    non-finite weight; and its tokenizer file (None where it has none)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ablate import checkpoints

    config_file, weights = folder / "config.json", folder / WEIGHTS
    if not config_file.is_file():
        raise AblateError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise AblateError(f"{config_file} is not JSON: {e}") from None
    if (
        not isinstance(config, dict)
        or config.get("model_type") != MODEL_TYPE
        or not isinstance(config.get("ablate"), dict)
    ):
        found = config.get("model_type") if isinstance(config, dict) else None
        raise AblateError(f"{folder} holds no ablate model: its config.json has model_type {found!r}, not 'ablate'")
    if not weights.is_file():
        raise AblateError(f"{folder} has no {WEIGHTS}")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise AblateError(f"cannot read {weights}: {e}") from None
    prefix = AblateForCausalLM.base_model_prefix + "."
    names = lambda cfg: {prefix + key: key for key in _state_keys(cfg)}
    model = checkpoints.loaded(config["ablate"], "config.json's ablate", state, names)
    tokenizer = folder / "tokenizer.json"
    return model.float().eval(), tokenizer if tokenizer.is_file() else None


def _state_keys(cfg) -> list[str]:
    from ablate.model import build_model

    return list(build_model(cfg, device=torch.device("meta")).state_dict())

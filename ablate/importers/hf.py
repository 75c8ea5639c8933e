"""A folder `ablate export` wrote (its model and tokenizer), as Hugging Face holds it, read back
as an ablate model."""

import json
from pathlib import Path

import torch

from ablate.core.errors import AblateError
from ablate.hf.folder import WEIGHTS
from ablate.hf.modeling import MODEL_TYPE, AblateForCausalLM
from ablate.importers import Imported, weights
from ablate.model import LanguageModel


def imported(path: Path) -> Imported:
    """The folder's model and tokenizer, and its config.json (less ablate's own section) as settings."""
    model, tokenizer = read(path)
    settings = {k: v for k, v in json.loads((path / "config.json").read_text()).items() if k != "ablate"}
    return Imported(model, {"hf": settings}, 0, {}, path / WEIGHTS, tokenizer)


def read(folder: Path) -> tuple[LanguageModel, Path | None]:
    """The model an exported folder holds (float32, eval mode), checked as `ablate import` checks
    every checkpoint: its config first, the weights' shapes on a model that holds no memory, no
    non-finite weight; and its tokenizer file (None where it has none)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_file, tensors = folder / "config.json", folder / WEIGHTS
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
    if not tensors.is_file():
        raise AblateError(f"{folder} has no {WEIGHTS}")
    try:
        state = load_file(tensors)
    except (SafetensorError, OSError) as e:
        raise AblateError(f"cannot read {tensors}: {e}") from None
    prefix = AblateForCausalLM.base_model_prefix + "."
    names = lambda cfg: {prefix + key: key for key in _state_keys(cfg)}
    model = weights.loaded(config["ablate"], "config.json's ablate", state, names)
    tokenizer = folder / "tokenizer.json"
    return model.float().eval(), tokenizer if tokenizer.is_file() else None


def _state_keys(cfg) -> list[str]:
    from ablate.model import build_model

    return list(build_model(cfg, device=torch.device("meta")).state_dict())

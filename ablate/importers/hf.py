"""A folder `ablate export` wrote (its model and tokenizer), as Hugging Face holds it, read back
as an ablate model."""

import json
from pathlib import Path

from ablate.core.errors import AblateError
from ablate.hf.folder import WEIGHTS
from ablate.hf.modeling import MODEL_TYPE, AblateForCausalLM
from ablate.importers import Imported, weights
from ablate.model import LanguageModel, build_model


def imported(path: Path) -> Imported:
    """The model an exported folder holds (float32, eval mode), checked as `ablate import` checks
    every checkpoint: its config first, the weights' shapes on a model that holds no memory, no
    non-finite weight; its tokenizer file (None where it has none); and its config.json, less
    ablate's own section, as settings."""
    config = _config(path)
    tokenizer = path / "tokenizer.json"
    settings = {k: v for k, v in config.items() if k != "ablate"}
    return Imported(
        _model(path, config), {"hf": settings}, 0, {}, path / WEIGHTS, tokenizer if tokenizer.is_file() else None
    )


def _config(folder: Path) -> dict:
    """The folder's config.json, refused in one line unless it describes an ablate model."""
    config_file = folder / "config.json"
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
    return config


def _model(folder: Path, config: dict) -> LanguageModel:
    """The model of config.json's ablate section, holding the folder's weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors = folder / WEIGHTS
    if not tensors.is_file():
        raise AblateError(f"{folder} has no {WEIGHTS}")
    try:
        state = load_file(tensors)
    except (SafetensorError, OSError) as e:
        raise AblateError(f"cannot read {tensors}: {e}") from None
    prefix = AblateForCausalLM.base_model_prefix + "."
    names = lambda cfg: {prefix + key: key for key in build_model(cfg, device="meta").state_dict()}
    return weights.loaded(config["ablate"], "config.json's ablate", state, names).float().eval()

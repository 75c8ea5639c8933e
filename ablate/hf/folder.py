"""A Hugging Face model folder for an ablate model (`ablate.importers.hf` reads one back).

The folder holds what `from_pretrained` reads: config.json (model_type `ablate`, with an `auto_map`
to the two small code files beside it, which `trust_remote_code=True` runs and which import the
installed ablate), model.safetensors, the tokenizer as transformers reads it (where the model has
one) and a README model card. It is written beside its destination and moved there whole, so that
a failed export leaves nothing half-written.
"""

import shutil
import tempfile
from pathlib import Path

from ablate.core.errors import AblateError
from ablate.hf.modeling import AblateForCausalLM
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

    from ablate.data.tokenize import EOT, start_token

    tokens = Tokenizer.from_file(str(path))
    special = {"bos_token": tokens.id_to_token(start_token(tokens))}
    if tokens.token_to_id(EOT) is not None:
        special["eos_token"] = EOT
    return PreTrainedTokenizerFast(tokenizer_object=tokens, model_max_length=context, **special)

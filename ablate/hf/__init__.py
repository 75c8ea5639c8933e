"""Hugging Face's side of the border: ablate's models as transformers models (`modeling`),
registered here with the Auto classes, so that an exported folder loads with
`AutoModelForCausalLM.from_pretrained(DIR)` wherever ablate is imported (remote code serves the
rest)."""

from ablate.core.errors import AblateError

try:
    from transformers import AutoConfig, AutoModelForCausalLM
except ImportError:
    raise AblateError('Hugging Face models need transformers: pip install "ablate[hf]"') from None

from ablate.hf.modeling import MODEL_TYPE, AblateConfig, AblateForCausalLM

AutoConfig.register(MODEL_TYPE, AblateConfig, exist_ok=True)
AutoModelForCausalLM.register(AblateConfig, AblateForCausalLM, exist_ok=True)

__all__ = ["AblateConfig", "AblateForCausalLM"]

"""ablate's models as transformers models: `AblateConfig` carries the ModelConfig, and
`AblateForCausalLM` wraps the backbone, so that `from_pretrained`, `generate()` and
lm-evaluation-harness's `hf` model read an ablate model as they read any causal LM.

`generate()` decodes from the model's state as `ablate sample` does (its `cache` holds the
`Decoding`): the prompt in one forward, then one step per token; past the state's reach, or for a
mixer that cannot decode, each token recomputes the forward over the last `context` tokens."""

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ablate.core.config import ModelConfig
from ablate.model import Decoding, LanguageModel, build_model

MODEL_TYPE = "ablate"


class AblateConfig(PretrainedConfig):
    """A transformers config around ablate's ModelConfig (`ablate`, as its JSON dump); the common
    names (vocab_size, hidden_size, max_position_embeddings, ...) mirror it for the tools that read
    them (lm-eval's maximum length)."""

    model_type = MODEL_TYPE

    def __init__(self, ablate: dict[str, Any] | None = None, **kwargs):
        self.ablate = ablate or {}
        if self.ablate:
            cfg = ModelConfig(**self.ablate)
            kwargs |= {
                "vocab_size": cfg.vocab_size,
                "hidden_size": cfg.d_model,
                "num_hidden_layers": cfg.n_layers,
                "num_attention_heads": cfg.n_heads,
                "max_position_embeddings": cfg.context,
            }
        # the backbone ties its head itself (ModelConfig.tie_embeddings): transformers ties nothing
        super().__init__(**(kwargs | {"tie_word_embeddings": False}))


class AblateCache:
    """generate()'s cache: the decoder's state after the tokens seen so far."""

    def __init__(self, decoding: Decoding):
        self.decoding = decoding

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.decoding.length


class AblateForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = AblateConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules: ClassVar[list[str]] = ["Block"]  # device_map="auto" keeps each block on one device

    def __init__(self, config: AblateConfig, model: LanguageModel | None = None):
        super().__init__(config)
        self.model: LanguageModel = model if model is not None else build_model(config.ablate)
        self.post_init()

    @classmethod
    def wrapping(cls, model: LanguageModel) -> "AblateForCausalLM":
        """The transformers model around an ablate model (sharing its weights)."""
        return cls(AblateConfig(ablate=model.cfg.model_dump(mode="json")), model).eval()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """The buffers a module derives (rotation tables, masks, decays), which no weights file
        holds; the weights are the backbone's own draw (ModelConfig.init), which loading replaces."""
        for name, value in getattr(module, "derived_buffers", dict)().items():
            setattr(module, name, value.to(getattr(module, name).device))

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # its cache is the backbone's Decoding (AblateCache), made in forward

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embed

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: AblateCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for input_ids: the tokens after `cache` when one is given (decoded from its
        state), else a whole sequence, whose state is kept when use_cache asks and the model can."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("ablate's models take no padding: give sequences of one length (batch size 1)")
        if cache is not None:
            logits = []
            for t in range(input_ids.size(1)):
                step, decoding = self.model.step(input_ids[:, t : t + 1], cache.decoding)
                logits.append(step)
                cache = AblateCache(decoding)
            logits = torch.cat(logits, dim=1)
        elif use_cache and input_ids.size(1) <= self.model.state_reach()[0]:
            logits, decoding = self.model.prefill(input_ids)
            cache = AblateCache(decoding)
        else:
            logits = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: AblateCache | None = None,
        use_cache: bool = True,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> dict[str, Any]:
        """The next forward's inputs, as `ablate sample` decodes: from the state while the sequence
        is within its reach, else the forward over the last `context` tokens. The attention mask
        goes along, so that a padded batch is refused rather than read as tokens."""
        if not use_cache or input_ids.size(1) > self.model.state_reach()[0]:
            inputs = {"input_ids": input_ids[:, -self.model.cfg.context :], "use_cache": False}
        elif cache is None:
            inputs = {"input_ids": input_ids, "use_cache": True}
        else:
            inputs = {"input_ids": input_ids[:, cache.decoding.length :], "cache": cache, "use_cache": True}
        return inputs | {"attention_mask": attention_mask}

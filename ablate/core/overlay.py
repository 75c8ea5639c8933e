"""A section of a study written in parts: the study's `model:` and `train:`, and each variant's over
them. Each part is typed as the whole is (`overlay`), so that a wrong value is refused where it is
written; the parts are merged as what each sets (`written`) and the whole is checked then."""

from typing import Any

from pydantic import BaseModel, ConfigDict, create_model
from pydantic.fields import FieldInfo


def overlay(config: type[BaseModel]) -> type[BaseModel]:
    """`config` with every field unset unless written: a study's or a variant's section, each value
    typed and bounded as in `config`; the whole is checked once merged (`written`, over the study's)."""
    fields = {
        name: (f.annotation, FieldInfo.merge_field_infos(f, default=None, default_factory=None, validate_default=False))
        for name, f in config.model_fields.items()
    }
    return create_model(f"{config.__name__}Overlay", __config__=ConfigDict(extra="forbid"), **fields)


def written(section: BaseModel) -> dict[str, Any]:
    """The settings a section writes, to merge over another's."""
    return section.model_dump(exclude_unset=True)

"""A study's YAML read for its errors: every problem one line, naming the file, the line and
the key, in a study author's words."""

from pathlib import Path

import yaml
from pydantic import ValidationError

from ablate.core.config import (
    Budget,
    DataConfig,
    Expectation,
    ModelConfig,
    StudyConfig,
    TaskConfig,
    TrainConfig,
    VariantConfig,
)
from ablate.core.errors import AblateError, did_you_mean
from ablate.plan.space import KINDS, SearchConfig


def known_keys(parent: tuple, document: dict) -> list[str]:
    """The keys allowed where an unknown one was found (parent: the path to its mapping)."""
    if not parent:
        return list(StudyConfig.model_fields)
    if isinstance(parent[-1], int):
        return list((Expectation if parent[:1] == ("expect",) else VariantConfig).model_fields)
    if len(parent) > 1 and parent[-2] == "space":
        return list(KINDS)
    data = document.get("data")
    sections = {
        "data": TaskConfig if isinstance(data, dict) and "task" in data else DataConfig,
        "model": ModelConfig,
        "train": TrainConfig,
        "search": SearchConfig,
        "budget": Budget,
    }
    return list(sections[parent[-1]].model_fields) if parent[-1] in sections else []


def first_error(error: ValidationError) -> tuple[tuple, str]:
    """The first problem pydantic found: where (the path of keys) and what, in a study author's words."""
    err = error.errors()[0]
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        return loc, "unknown key"
    if err["type"] == "missing":
        return loc, "required key is missing"
    return loc, err["msg"].removeprefix("Value error, ")


class Document:
    """The YAML document as plain data, plus the line of every key, for error messages."""

    def __init__(self, path: Path, text: str):
        self.path = path
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.load(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise AblateError(f"{where}: invalid YAML: {e.problem or e.context}") from None
        except yaml.YAMLError as e:
            raise AblateError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise AblateError(f"{path}: a study must be a YAML mapping with name, variants, ...")
        self.mapping = data
        self.line: dict[tuple, int] = {}
        self._index(node, ())

    def _index(self, node, loc: tuple) -> None:
        self.line[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if loc + (key.value,) in self.line:  # YAML's loaders keep the last value silently
                    dotted = ".".join(str(p) for p in loc + (key.value,))
                    first = self.line[loc + (key.value,)]
                    raise AblateError(
                        f"{self.path}:{key.start_mark.line + 1}: {dotted}: duplicate key (first at line {first})"
                    )
                self._index(value, loc + (key.value,))
                self.line[loc + (key.value,)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, loc + (i,))

    def at(self, loc: tuple) -> str:
        """'file:line' for the deepest part of loc that the document has."""
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.line:
                return f"{self.path}:{self.line[loc[:n]]}"
        return str(self.path)

    def explain(self, error: ValidationError, locate=lambda loc: loc) -> str:
        """The first validation error as one line: file:line: dotted.key: problem."""
        loc, msg = first_error(error)
        if loc[:1] == ("data",) and loc[1:2] in (("corpus",), ("task",)):
            loc = loc[:1] + loc[2:]  # the tag of data's kind is not a key of the document
        loc = locate(loc)
        key = ".".join(str(p) for p in loc) or "(study)"
        if msg == "unknown key":
            msg += did_you_mean(str(loc[-1]), known_keys(loc[:-1], self.mapping))
        return f"{self.at(loc)}: {key}: {msg}"

"""The README model card of an exported run: what it is (variant, study, parameters, data) and
what it measured, read from the tracking store, and how to load it."""

from ablate.core.schema import Param, Tag

LOADING = """\
## Loading

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{folder}", trust_remote_code=True)  # needs `pip install ablate[hf]`
tokenizer = AutoTokenizer.from_pretrained("{folder}")  # where the run trained on text
```

`import ablate.hf` registers the model with the Auto classes, after which `trust_remote_code` is not needed.
`generate()` decodes from the model's state (its `cache`), as `ablate sample` does.
"""


def card(run, folder_name: str) -> str:
    """Markdown for the run (an MLflow Run): its identity, sizes, data and final metrics."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    rows = [
        ("run", run.info.run_id),
        ("study", tags.get(Tag.STUDY, "none (imported)")),
        ("variant", tags.get(Tag.VARIANT, run.info.run_name)),
        ("mixer", params.get(f"{Param.MODEL}.mixer", "")),
        ("seed", tags.get(Tag.SEED, "")),
        ("parameters", params.get(Param.N_PARAMS, "")),
        ("parameters without embeddings", params.get(Param.N_PARAMS_NON_EMBEDDING, "")),
        ("data fingerprint", tags.get(Tag.DATA_FINGERPRINT, "not recorded")),
        ("causal", tags.get(Tag.CAUSAL, "")),
    ]
    lines = [f"# {rows[2][1]}: a model trained by ablate", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows if value != ""]
    lines += ["", "## Metrics (the run's last value of each)", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.6g} |" for name, value in sorted(metrics.items())]
    else:
        lines.append("none recorded")
    return "\n".join(lines) + "\n\n" + LOADING.format(folder=folder_name)

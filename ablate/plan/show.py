"""A planned study in the terminal (`ablate plan`): every trial's shape, counts and cost."""

from ablate.plan.study import Study


def print_plan(study: Study, console) -> None:
    from rich.table import Table

    budget = study.config.budget
    title = f"study {study.name}: {len(study.trials)} trials" + (
        f" at {budget.describe()} (±{budget.tolerance:.1%})" if budget else ""
    )
    table = Table(title=title)
    columns = ("variant", "seed", "mixer", "layers", "d_model", "heads", "qkv", "ffn", "params", "non-emb")
    for col in columns + ("FLOPs/token", "state", "steps", "tokens"):
        table.add_column(col, justify="left" if col in ("variant", "mixer") else "right", no_wrap=True)
    for t in study.trials:
        m = t.model
        table.add_row(
            t.variant,
            str(t.seed),
            m.mixer,
            str(m.n_layers),
            str(m.d_model),
            str(m.n_heads),
            str(m.qkv_dim),
            str(m.ffn_dim) if m.ffn else "off",
            f"{t.n_params:,}",
            f"{t.n_params_non_embedding:,}",
            f"{t.flops_per_token:,.0f}",
            "-" if t.state_size is None else f"{t.state_size:,}",
            f"{t.train.steps:,}",
            f"{t.train.steps * t.train.batch_size * m.context:,}",
        )
    console.print(table)
    print(
        "FLOPs/token: forward pass, matrix products counted by torch plus each mixer's element-wise work, counted as it runs"
    )
    print("state: numbers per sequence a decoder carries between tokens ('-': grows with the sequence)")
    print("tokens: what the trial trains on (steps × batch × context)")
    _print_devices(study)
    backbones = {t.variant: t.model for t in study.trials}
    for variant, model in backbones.items():
        switches = ", ".join(f"{k} {v}" for k, v in model.switches().items())
        print(f"backbone {variant}: preset {model.preset}: {switches}")
    for variant, search in study.searches.items():
        print(f"search {variant}: {search.describe()}; its final seeds train with the best setting")
    print("model settings (mixer options, ffn type) in full: ablate plan --json")


def _print_devices(study: Study) -> None:
    """How each trial's processes share it, where it trains on several (train.devices)."""
    devices = study.devices
    if devices == 1:
        return
    micro = "/".join(map(str, sorted({t.train.micro_steps for t in study.trials})))
    shards = ", ".join(dict.fromkeys(t.variant for t in study.trials if t.train.shard))
    print(
        f"devices: each trial trains on {devices} processes (one GPU each on CUDA), each taking 1/{devices} "
        f"of every batch in {micro} micro-step(s)"
        + (f"; sharded (FSDP), each holding 1/{devices} of the model: {shards}" if shards else "")
    )

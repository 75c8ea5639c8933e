"""The table a study's run ends with: every final trial, what to compare its losses with, and
where to look next."""

from rich.table import Table

from ablate.core.schema import Metric
from ablate.plan.study import Study
from ablate.run.schedule import StudyRun
from ablate.run.workers import Stores


def print_summary(study: Study, run: StudyRun, stores: Stores, hint: str, console) -> None:
    """Every final trial in one table, what to compare its losses with, and where to look next
    (`hint`: the store flags to repeat in the commands shown)."""
    table = Table(title=f"study {study.name}")
    leaky = any(Metric.PREFIX_VAL_LOSS in o.metrics for o in run.outcomes)
    columns = ["variant", "seed", "params (non-emb)", "val_loss"] + ["prefix_val_loss"] * leaky + ["tokens/s", "status"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("variant", "status") else "right")
    for o in run.outcomes:
        m = o.metrics
        prefix = [f"{m[Metric.PREFIX_VAL_LOSS]:.4f}" if Metric.PREFIX_VAL_LOSS in m else "-"] * leaky
        table.add_row(
            o.trial.variant,
            str(o.trial.seed),
            f"{o.trial.n_params:,} ({o.trial.n_params_non_embedding:,})",
            f"{m[Metric.VAL_LOSS]:.4f}" if m else "-",
            *prefix,
            f"{m[Metric.MEAN_TOKENS_PER_S]:,.0f}" if m else "-",
            o.status.lower() + (f": {o.reason}" if o.reason else ""),
        )
    console.print(table)
    if leaky:
        console.print(
            "prefix_val_loss: leaking variants' loss with each position predicted from its own prefix alone "
            "(the honest next-token loss; val_loss is teacher-forced and sees what it must not)"
        )
    console.print(
        f"unigram entropy of the train tokens: {run.meta.unigram_entropy:.4f} nats/token "
        "(the loss of a model that ignores context; val losses should sit far below it)"
    )
    if run.meta.chance_accuracy is not None:
        console.print(
            f"chance level of val_accuracy: {run.meta.chance_accuracy:.4f} "
            "(the best guess without the capability the task tests)"
        )
    console.print(f"study wall time: {run.seconds:.0f}s")
    if run.startup_s is not None:
        built = (
            f" (building the data's tokenizer and splits took {run.data_build_s:.1f}s of it)"
            if run.data_build_s
            else ""
        )
        console.print(f"start-up: {run.startup_s:.1f}s from the command to its first training step{built}")
    local = stores.uri.startswith("sqlite")
    console.print(f"results: {stores.uri}" + (f" (artifacts under {stores.results / 'artifacts'})" if local else ""))
    console.print(f"compare: ablate compare{hint} --study {study.name} --metric val_loss")
    if study.config.expect:
        console.print(f"check:   ablate compare{hint} --study {study.name} --check  (the study's expectations)")
    console.print(f"browse:  ablate ui{hint}")

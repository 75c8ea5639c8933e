"""A study's other forms, as configs: its smoke form (`--smoke`), and a scaling study written out
as one variant per variant and size."""

from ablate.core.config import StudyConfig
from ablate.core.questions import sized_name

# `--smoke`: the same models and data, trained just long enough to see every part run on a CPU.
SMOKE_TRAIN = {"steps": 20, "warmup": 2, "eval_every": 20, "eval_batches": 2, "log_every": 5}
SMOKE_SEARCH = {"trials": 2, "search_steps": 10}


def smoke(config: StudyConfig) -> StudyConfig:
    """The study's smoke form: 20 steps, one seed, 2 search trials of 10 steps, its own experiment
    (NAME-smoke), so it never mixes with real runs."""

    def shrink(search):
        return {**search, **SMOKE_SEARCH} if isinstance(search, dict) else search

    variants = [
        v.model_copy(update={"train": v.train.model_copy(update=SMOKE_TRAIN), "search": shrink(v.search)})
        for v in config.variants
    ]
    return config.model_copy(
        update={
            "name": f"{config.name}-smoke",
            "train": config.train.model_copy(update=SMOKE_TRAIN),
            "variants": variants,
            "seeds": config.seeds[:1],
            "search": shrink(config.search),
        }
    )


def sized(config: StudyConfig) -> StudyConfig:
    """A scaling study (a list of sizes in `budget`) as one variant per variant and size, named
    NAME@SIZE (mha@50k), in the order written, each variant's sizes in increasing order. A
    contrast or expectation holds at every size, unless it names a size itself (mha@400k); the
    baseline is the baseline at the largest size."""
    if not config.scaling:
        return config
    sizes = config.budget.sizes
    base = config.baseline or config.variants[0].name
    baseline = sized_name(base, sizes[-1])

    def each_size(a: str, b: str | None) -> list[tuple[str, str]]:
        """The pair at every size; as written where either names a size (b: the baseline's)."""
        if "@" in a or "@" in (b or ""):
            return [(a, b or baseline)]
        return [(sized_name(a, s), sized_name(b or base, s)) for s in sizes]

    return config.model_copy(
        update={
            "variants": [v.model_copy(update={"name": sized_name(v.name, s)}) for v in config.variants for s in sizes],
            "contrasts": [pair for a, b in config.contrasts for pair in each_size(a, b)],
            "expect": [
                e.model_copy(update={"variant": variant, "against": against})
                for e in config.expect
                for variant, against in each_size(e.variant, e.against)
            ],
            "baseline": baseline,
        }
    )

"""The typed study configs: validating a study, and the CLI's help, need no torch."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NO_TORCH = """
import sys, yaml
from ablate.core.config import StudyConfig
from ablate.cli import main
for path in sys.argv[1:]:
    StudyConfig(**yaml.safe_load(open(path)))
for argv in (["--help"], ["plan", "--help"], ["run", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
assert "torch" not in sys.modules, "torch was imported"
"""


def test_validating_every_shipped_study_and_the_help_import_no_torch():
    studies = sorted(str(p) for p in (ROOT / "studies").glob("*.yaml"))
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *studies], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: ablate" in done.stdout


NANOGPT_EVAL_INTERVAL = {"shakespeare_char"}  # keeps nanoGPT's eval_interval of 250 to match its recipe


def test_every_shipped_study_draws_learning_curves_of_ten_points_or_more():
    """The report's curves need evals to show a trend: step 0, every eval_every, and the last."""
    import yaml

    from ablate.core.config import StudyConfig, TrainConfig
    from ablate.core.overlay import written

    for path in sorted((ROOT / "studies").glob("*.yaml")):
        config = StudyConfig(**yaml.safe_load(path.read_text()))
        for variant in config.variants:
            train = TrainConfig(**written(config.train) | written(variant.train))
            points = len({0, train.steps, *range(train.eval_every, train.steps + 1, train.eval_every)})
            if path.stem not in NANOGPT_EVAL_INTERVAL:
                assert points >= 10, f"{path.name}: {variant.name} has {points} evals per curve"


def test_a_study_and_its_variants_write_typed_overlays_merged_as_what_each_sets():
    """A variant's model and train are partial ModelConfig and TrainConfig: a wrong value is refused
    where it is written, before anything merges, and the merge takes what each part sets."""
    from pydantic import ValidationError

    from ablate.core.config import StudyConfig
    from ablate.core.overlay import written

    config = StudyConfig(
        name="s",
        model={"mixer": "mha", "d_model": 64},
        train={"steps": 10, "lr": 1e-3},
        variants=[{"name": "a", "model": {"n_layers": 2}, "train": {"lr": 2e-3}}],
    )
    variant = config.variants[0]
    assert written(config.model) | written(variant.model) == {"mixer": "mha", "d_model": 64, "n_layers": 2}
    assert written(config.train) | written(variant.train) == {"steps": 10, "lr": 2e-3}
    for bad, where in [
        ({"model": {"d_model": "wide"}}, ("variants", 0, "model", "d_model")),
        ({"train": {"steps": 0}}, ("variants", 0, "train", "steps")),
        ({"model": {"d_modle": 64}}, ("variants", 0, "model", "d_modle")),
    ]:
        with pytest.raises(ValidationError) as e:
            StudyConfig(name="s", variants=[{"name": "a", **bad}])
        assert e.value.errors()[0]["loc"] == where

"""A malformed study stops before any training: exit 2, one line naming the key and line, nothing written."""

import argparse
from pathlib import Path

import pytest

from ablate.cli import main
from tests.conftest import TINY_STUDY, write_study

CASES = {
    "unknown key": (("steps: 30", "stpes: 30"), "study.yaml:4: train.stpes: unknown key (did you mean 'steps'?)"),
    "unknown top-level key": (
        ("seeds: [0, 1]", "seeds: [0, 1]\nseed: 3"),
        "study.yaml:9: seed: unknown key (did you mean 'seeds'?)",
    ),
    "unknown variant key": (
        ("- {name: mha,", "- {name: mha, seeds: [1],"),
        "study.yaml:6: variants.0.seeds: unknown key",
    ),
    "unknown model key in a variant": (
        ("mixer: mha}", "mixer: mha, d_modl: 8}"),
        "study.yaml:6: variants.0.model.d_modl: unknown key (did you mean 'd_model'?)",
    ),
    "unknown variant": (
        ("mixer: mha}", "mixer: mhaa}"),
        "study.yaml:6: variant 'mha': unknown variant 'mhaa' (did you mean 'mha'?)",
    ),
    "wrong type": (("d_model: 32", "d_model: wide"), "study.yaml:3: model.d_model: Input should be a valid integer"),
    "negative lr": (("steps: 30", "steps: 30, lr: -0.1"), "study.yaml:4: train.lr: Input should be greater than 0"),
    "missing data file": (("source: stdlib", "source: missing.txt"), "study.yaml:2: data.source:"),
    "zero size": (("n_layers: 1", "n_layers: 0"), "study.yaml:3: model.n_layers: Input should be greater than 0"),
    "heads do not divide": (
        ("n_heads: 2", "n_heads: 3"),
        "study.yaml:3: model.qkv_dim: qkv_dim 32 is not divisible by n_heads 3",
    ),
    "unknown mixer option": (
        ("mixer: mha}", "mixer: mha, mixer_options: {windw: 4}}"),
        "has no option 'windw' (did you mean 'window'?)",
    ),
    "variant override wrong": (
        ("mixer: aft-simple, ffn: false", "mixer: aft-simple, ffn: maybe"),
        "study.yaml:7: variants.1.model.ffn: Input should be a valid boolean",
    ),
    "retention chunk as long as the context": (
        ("mixer: mha}", "mixer: retention, mixer_options: {chunk_size: 32}}"),
        "study.yaml:6: variant 'mha': retention chunk_size 32 must be below the context 32",
    ),
    "unknown retention scope": (
        ("mixer: mha}", "mixer: retention, mixer_options: {scope: global, chunk_size: 8}}"),
        "mixer 'retention' option 'scope': Input should be 'chunk', 'sequence' or 'batch', got 'global'",
    ),
    "retnet form": (
        ("mixer: mha}", "mixer: retnet, mixer_options: {form: fast}}"),
        "mixer 'retnet' option 'form': Input should be 'parallel', 'chunkwise' or 'recurrent', got 'fast'",
    ),
    "hybrid pattern of unknown mixer": (
        ("mixer: mha}", "mixer: hybrid, mixer_options: {pattern: [aft-simple, mhaa]}}"),
        "study.yaml:6: variant 'mha': unknown variant 'mhaa' (did you mean 'mha'?)",
    ),
    "hybrid pattern entry malformed": (
        ("mixer: mha}", "mixer: hybrid, mixer_options: {pattern: [[mha]]}}"),
        "hybrid pattern entries are a mixer name or {name: {options}}",
    ),
    "aft-local window": (
        ("mixer: mha}", "mixer: aft-local, mixer_options: {window: 0}}"),
        "mixer 'aft-local' option 'window': Input should be greater than or equal to 1, got 0",
    ),
    "unsafe name": (("name: tiny", "name: ../escape"), "study.yaml:1: name: must be"),
    "bad yaml": (("variants:", "variants: [\n"), "invalid YAML"),
    "baseline not a variant": (
        ("seeds: [0, 1]", "seeds: [0, 1]\nbaseline: mah"),
        "baseline 'mah' is not a variant (did you mean 'mha'?)",
    ),
    "duplicate seeds": (("seeds: [0, 1]", "seeds: [0, 0]"), "seeds must be unique"),
    "budget with two targets": (
        ("seeds: [0, 1]", "seeds: [0, 1]\nbudget: {params: 9000, flops_per_token: 9000}"),
        "study.yaml:9: budget: a budget sets exactly one of params and flops_per_token",
    ),
    "scale without a budget": (
        ("- {name: mha,", "- {name: mha, scale: n_layers,"),
        "study.yaml:6: variants.0.scale: the study has no budget to meet",
    ),
    "unreachable budget": (
        ("seeds: [0, 1]", "seeds: [0, 1]\nbudget: {params: 10}"),
        (
            "study.yaml:6: variant 'mha': cannot reach 10 non-embedding parameters within 1.0% by scaling d_model "
            "and ffn_dim: the closest reachable is"
        ),
    ),
    "scale ffn_dim without an FFN": (
        ("ffn: false}}\nseeds: [0, 1]", "ffn: false}, scale: ffn_dim}\nseeds: [0, 1]\nbudget: {params: 9000}"),
        "study.yaml:7: variant 'aft': scale ffn_dim needs an FFN (ffn: true)",
    ),
    "warmup too long": (
        ("warmup: 5", "warmup: 500"),
        "study.yaml:4: train.warmup: warmup (500) is longer than steps (30)",
    ),
    "warmup's default longer than steps": (
        ("warmup: 5, ", ""),
        "study.yaml:4: train.warmup: warmup (500) is longer than steps (30)",
    ),
    "warmup's default longer than a variant's steps": (
        ("mixer: mha}", "mixer: mha}, train: {warmup: 3}}\n  - {name: short, model: {mixer: mha}, train: {steps: 4}"),
        "study.yaml:4: train.warmup: warmup (5) is longer than steps (4)",
    ),
    "negative seed": (
        ("seeds: [0, 1]", "seeds: [-1]"),
        "study.yaml:8: seeds.0: Input should be greater than or equal to 0",
    ),
    "seed beyond 2**32 - 1": (
        ("seeds: [0, 1]", "seeds: [4294967296]"),
        "study.yaml:8: seeds.0: Input should be less than or equal to 4294967295",
    ),
    "a boolean for a count": (
        ("steps: 30", "steps: true"),
        "study.yaml:4: train.steps: Input should be a valid integer",
    ),
    "a boolean for a width": (
        ("d_model: 32", "d_model: true"),
        "study.yaml:3: model.d_model: Input should be a valid integer",
    ),
    "an infinite rate": (
        ("steps: 30", "steps: 30, lr: .inf"),
        "study.yaml:4: train.lr: Input should be a finite number",
    ),
    "a name ending in a newline": (("name: tiny", 'name: "tiny\\n"'), "study.yaml:1: name: must be"),
    "a duplicate top-level key": (
        ("seeds: [0, 1]", "seeds: [0, 1]\nname: other"),
        "study.yaml:9: name: duplicate key (first at line 1)",
    ),
    "a duplicate nested key": (
        ("steps: 30", "steps: 30, steps: 40"),
        "study.yaml:4: train.steps: duplicate key (first at line 4)",
    ),
    "a batch the ranks and micro-steps do not divide": (
        ("steps: 30", "steps: 30, devices: 3"),
        "study.yaml:4: train.micro_steps: batch_size 8 is not divisible by devices × micro_steps = 3",
    ),
    "a model sharded over one process": (
        ("steps: 30", "steps: 30, shard: true"),
        "study.yaml:4: train.shard: shards a model over the processes of train.devices, which is 1",
    ),
    "a sharded model under muon": (
        ("steps: 30", "steps: 30, devices: 2, shard: true, optimizer: muon"),
        "study.yaml:4: train.shard: works with optimizer adamw",
    ),
    "devices differing between variants": (
        ("{name: mha, model: {mixer: mha}}", "{name: mha, model: {mixer: mha}, train: {devices: 2}}"),
        "study.yaml: train.devices must be the same for every variant, got [1, 2]",
    ),
    "a duplicate key in a variant": (
        ("{name: mha, model: {mixer: mha}}", "{name: mha, model: {mixer: mha}, model: {mixer: aft-simple}}"),
        "study.yaml:6: variants.0.model: duplicate key (first at line 6)",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_malformed_study_gives_one_line_and_exit_2(case, tmp_path, capsys):
    (old, new), expected = CASES[case]
    assert old in TINY_STUDY
    path = write_study(tmp_path, TINY_STUDY.replace(old, new, 1))
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ablate: error: ")
    assert expected in err
    assert "Traceback" not in err
    assert not results.exists()


def test_missing_study_file(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read study" in capsys.readouterr().err


def test_unwritable_results_directory(tmp_path, capsys):
    path = write_study(tmp_path, TINY_STUDY)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", str(path), "--results", str(blocker / "results")]) == 2
    assert "not a writable directory" in capsys.readouterr().err


HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.yaml"))


@pytest.mark.parametrize("path", HOSTILE, ids=[p.stem for p in HOSTILE])
def test_hostile_study_stops_with_one_line_naming_where(path, tmp_path, capsys):
    """Each file of tests/hostile/ says on its first line what the error must say."""
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    study = tmp_path / path.name  # a copy, so that relative data paths start from tmp_path
    study.write_text(path.read_text())
    results = tmp_path / "results"
    assert main(["run", str(study), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablate: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert expected in err
    assert f"{study}:" in err  # the file, and the line (and column, for syntax)
    assert not results.exists()


def test_no_yaml_tag_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    study = write_study(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\nvariants: []\n")
    assert main(["plan", str(study)]) == 2
    assert not marker.exists()


def _write_bad(kind: str, folder: Path) -> str:
    """A data source of one bad kind; returns its file name."""
    import numpy as np

    if kind == "empty file":
        (folder / "data.txt").write_text("")
        return "data.txt"
    if kind == "binary file":
        (folder / "data.txt").write_bytes(bytes(range(256)) * 40)
        return "data.txt"
    if kind == "one character repeated":  # BPE merges it into a handful of tokens
        (folder / "data.txt").write_text("a" * 20000)
        return "data.txt"
    if kind == "a val split shorter than the context":
        np.save(folder / "data.npy", np.arange(2000) % 512)
        return "data.npy, split: tail, val_fraction: 0.01"
    arrays = {
        "float ids": np.linspace(0, 10, 5000),
        "negative ids": np.arange(-10, 4990),
        "ids beyond the vocabulary": np.arange(5000),
    }
    np.save(folder / "data.npy", arrays[kind])
    return "data.npy"


BAD_DATA = {
    "empty file": "no text in 1 file(s): each is empty or binary",
    "binary file": "no text in 1 file(s): each is empty or binary",
    "float ids": "must hold a 1-D integer token array",
    "negative ids": "holds token ids outside [0, data.vocab_size=512)",
    "ids beyond the vocabulary": "holds token ids outside [0, data.vocab_size=512)",
    "one character repeated": "split has",
    "a val split shorter than the context": "the val split has 20 tokens, too few for context 32",
}


@pytest.mark.parametrize("kind", BAD_DATA)
def test_bad_data_stops_before_any_store_is_written(kind, tmp_path, capsys, own_store):
    name = _write_bad(kind, tmp_path)
    path = write_study(tmp_path, TINY_STUDY.replace("source: stdlib", f"source: {name}"))
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablate: error: data.source: ") and err.count("\n") == 1 and BAD_DATA[kind] in err
    assert not (results / "mlflow.db").exists() and not (results / "optuna.db").exists()  # no parent run left RUNNING


def test_a_full_disk_while_the_cache_is_written_is_one_line_and_leaves_nothing(
    tmp_path, capsys, monkeypatch, own_store
):
    """The splits are written with plain writes, which a full disk stops with ENOSPC."""
    import errno

    from ablate.data import stream

    def full(out, tokens):
        out.write(b"\0" * 100)  # part of it, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream, "append", full)
    path = write_study(tmp_path, TINY_STUDY)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err == f"ablate: error: cannot write the data cache under {results / 'cache'}: No space left on device\n"
    assert not [
        p for p in (results / "cache").iterdir() if p.suffix not in (".tokens", ".lock")
    ]  # no half-written entry
    assert not (results / "mlflow.db").exists()


def test_a_broken_study_database_is_said_in_words(tmp_path, capsys, own_store):
    """SQLAlchemy's own text (statements, 'Query-invoked autoflush') is no message for a user."""
    junk = tmp_path / "optuna.db"
    junk.write_bytes(bytes(range(256)) * 20)
    path = write_study(tmp_path, TINY_STUDY)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--storage", f"sqlite:///{junk}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablate: error: the study database (--storage") and err.count("\n") == 1
    assert "file is not a database" in err and "[SQL" not in err
    assert not (results / "mlflow.db").exists()


@pytest.mark.parametrize(
    "argv", [["import", "strawberry", "x.pt"], ["compare"], ["ui"]], ids=["import", "compare", "ui"]
)
def test_every_command_that_names_a_study_refuses_a_name_that_leaves_the_store(argv, tmp_path, capsys):
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--study", "../evil name", "--results", str(results)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "a study name must be 1-100 letters" in err
    assert not results.exists()


@pytest.mark.parametrize("argv", [["compare"], ["ui"], ["eval", "some-run"], ["sample", "some-run"]])
def test_a_command_that_reads_the_store_says_in_one_line_that_there_is_none_and_creates_none(
    argv, tmp_path, capsys, own_store
):
    results = tmp_path / "results"
    assert main([*argv, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ablate: error: no results in {results}") and err.count("\n") == 1
    assert not results.exists()


def _commands_with(option: str) -> list[str]:
    """Every subcommand of `ablate` that takes `option`."""
    from ablate.cli import parser

    (sub,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(name for name, cmd in sub.choices.items() if option in cmd._option_string_actions)


@pytest.mark.parametrize("option", ["--storage", "--tracking-uri"])
@pytest.mark.parametrize("url", ["junk://x", "notadialect+nodriver://u@h/db"])
def test_every_storage_and_tracking_url_option_refuses_a_url_nothing_can_open(option, url, tmp_path, capsys):
    commands = _commands_with(option)
    assert commands  # the family is not empty
    study = write_study(tmp_path, TINY_STUDY)
    for command in commands:
        positional = {"run": [str(study)], "worker": [str(study)], "sample": ["r"], "eval": ["r"]}.get(command, [])
        extra = ["--optuna"] if command == "ui" and option == "--storage" else []
        with pytest.raises(SystemExit) as stop:
            main([command, *positional, *extra, option, url, "--results", str(tmp_path / "results")])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and f"argument {option}: {url!r} is not" in err, command
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv", [["status"], ["ui", "--optuna"]])
def test_a_read_only_command_on_a_sqlite_storage_that_is_not_there_creates_nothing(argv, tmp_path, capsys):
    missing = tmp_path / "new.db"
    assert main([*argv, "--storage", f"sqlite:///{missing}", "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablate: error: no ") and f" at sqlite:///{missing} yet: " in err
    assert err.count("\n") == 1 and not missing.exists()


@pytest.mark.parametrize("name", ["mlflow.db", "optuna.db", "cache", "checkpoints", "artifacts", "optuna.db-journal"])
def test_a_study_may_not_take_the_name_of_the_stores_own_files(name, tmp_path, capsys):
    """Its report folder would collide with them: compare could never write it ('File exists')."""
    path = write_study(tmp_path, TINY_STUDY.replace("name: tiny", f"name: {name}"))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "study.yaml:1: name: must not name one of the results folder's own entries" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["compare", "--study", name, "--results", str(tmp_path / "results")])
    assert "a study name must not name" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--optuna"]], ids=["mlflow", "optuna"])
def test_ui_on_a_port_another_server_holds_says_so_and_starts_nothing(tmp_path, capsys, extra):
    """A server already on the port answered the health check in ui's place: ui printed that
    server's address as its own, and exited 0 once its own failed to bind."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["ui", *extra, "--port", str(port), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ablate: error: --port {port} is taken on 127.0.0.1") and err.count("\n") == 1


@pytest.mark.parametrize("value", ["99999", "0", "-1", "http"])
def test_ui_refuses_a_port_that_is_not_one_in_one_line(value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["ui", "--port", value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "must be a port from 1 to 65535" in err

"""`ablate export` and `ablate import hf`: a model leaves ablate as a Hugging Face folder that
transformers loads in a fresh process (with remote code, or after `import ablate.hf`), giving
ablate's logits and, greedily, `ablate sample`'s tokens; and comes back with its val_loss."""

import json
import textwrap

import mlflow
import pytest
import torch

import ablate
from ablate.cli import main
from ablate.core.config import PRESETS
from ablate.hf import folder
from ablate.inference import sample
from ablate.mixers import registry
from tests.conftest import run_python
from tests.test_end_to_end import store_of, trial_runs

SHAPE = {"vocab_size": 64, "context": 48, "d_model": 32, "n_layers": 2, "n_heads": 2, "qkv_dim": 32, "ffn_dim": 64}
IDS = torch.arange(40).remainder(61).mul(7).remainder(64).unsqueeze(0)  # 40 tokens, no padding
PROMPT, NEW = IDS[0, :5].tolist(), 60  # past the context: decoding hands over to recomputing

FRESH = textwrap.dedent(
    """\
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM

    root, out = sys.argv[1], {}
    ids, prompt, new = torch.tensor(json.loads(sys.argv[2])), json.loads(sys.argv[3]), int(sys.argv[4])
    for name in json.loads(sys.argv[5]):
        model = AutoModelForCausalLM.from_pretrained(f"{root}/{name}", trust_remote_code=True)
        with torch.no_grad():
            logits = model(ids).logits
        tokens = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False)
        out[name] = {"logits": logits.tolist(), "tokens": tokens[0, len(prompt):].tolist()}
    print(json.dumps(out))
    """
)


SHIPPED = [n for n in ablate.variants() if registry.mixer_class(n).__module__.startswith("ablate.architectures.")]


def _models():
    for mixer in SHIPPED:
        for preset in PRESETS:
            torch.manual_seed(0)
            yield f"{mixer}-{preset}", ablate.build_model({**SHAPE, "mixer": mixer, "preset": preset}).eval()


@pytest.mark.slow
def test_every_mixer_and_preset_loads_in_a_fresh_process_with_ablates_logits_and_greedy_tokens(tmp_path):
    """Remote code (the folder's two files) in a process that never imported ablate.hf."""
    expected = {}
    for name, model in _models():
        folder.write(model, None, tmp_path / name, "card")
        with torch.no_grad():
            logits = model(IDS)
        expected[name] = (logits, sample.generate(model, PROMPT, NEW, 0, None, 0))
    proc = run_python(
        FRESH, str(tmp_path), json.dumps(IDS.tolist()), json.dumps(PROMPT), str(NEW), json.dumps(sorted(expected))
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    for name, (logits, tokens) in expected.items():
        got = torch.tensor(loaded[name]["logits"])
        assert (got - logits).abs().max() <= 1e-5, name
        assert loaded[name]["tokens"] == tokens, name


def test_after_import_ablate_hf_a_folder_loads_without_remote_code_and_generates_from_its_state(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = ablate.build_model({**SHAPE, "mixer": "gla"}).eval()
    folder.write(model, None, tmp_path / "gla", "card")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gla")
    assert type(loaded).__module__ == "ablate.hf.modeling"
    out = loaded.generate(torch.tensor([PROMPT]), max_new_tokens=10, do_sample=False)
    assert out[0, 5:].tolist() == sample.generate(model, PROMPT, 10, 0, None, 0)
    step = loaded(torch.tensor([PROMPT]), use_cache=True)
    assert step.cache.get_seq_length() == len(PROMPT)  # a state, not a recomputation, carries on
    padded = torch.tensor([[0, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="take no padding"):
        loaded(torch.tensor([PROMPT]), attention_mask=padded)
    with pytest.raises(ValueError, match="take no padding"):
        loaded.generate(torch.tensor([PROMPT]), attention_mask=padded, max_new_tokens=3, do_sample=False)


def test_the_folder_holds_config_weights_code_card_and_the_tokenizer_transformers_reads(finished, tmp_path, capsys):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    _, results, _ = finished
    run = trial_runs(store_of(results), "tiny").iloc[0]
    out = tmp_path / "export"
    assert main(["export", run["run_id"], str(out), "--results", str(results)]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "configuration_ablate.py",
        "modeling_ablate.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "ablate" and config["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_ablate.AblateForCausalLM"
    )
    assert config["ablate"]["mixer"] == run["params.model.mixer"]
    card = (out / "README.md").read_text()
    for shown in (run["tags.ablate.variant"], "tiny", run["params.n_params"], run["tags.ablate.data_fingerprint"]):
        assert shown in card
    assert f"| val_loss | {run['metrics.val_loss']:.6g} |" in card
    theirs = AutoTokenizer.from_pretrained(out)
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "def f(x):\n    return x\n"
    assert theirs(text)["input_ids"] == ours.encode(text).ids
    assert theirs.eos_token == "<|endoftext|>" and theirs.bos_token == "<|endoftext|>"
    assert theirs.model_max_length == int(run["params.model.context"])


def test_export_then_import_gives_the_runs_val_loss_and_its_tokenizer(finished, tmp_path, capsys):
    study, results, _ = finished
    store = ["--results", str(results)]
    run_id = trial_runs(store_of(results), "tiny").iloc[0]["run_id"]
    assert main(["export", run_id, str(tmp_path / "out"), *store]) == 0
    assert main(["import", "hf", str(tmp_path / "out"), "--study", "hf-roundtrip", *store]) == 0
    imported = capsys.readouterr().out.split(" as run ")[1].split()[0]
    losses = []
    for rid in (run_id, imported):
        assert main(["eval", rid, "--data", str(study), "--batches", "3", "--json", *store]) == 0
        losses.append(json.loads(capsys.readouterr().out)["val_loss"])
    assert losses[0] == losses[1]
    client = mlflow.MlflowClient(store_of(results))
    names = {a.path for a in client.list_artifacts(imported, "model")}
    assert "model/tokenizer.json" in names
    assert client.get_run(imported).data.tags["ablate.role"] == "import"


def test_an_export_over_a_folder_that_holds_files_needs_force_and_leaves_it_untouched(finished, tmp_path, capsys):
    _, results, _ = finished
    run_id = trial_runs(store_of(results), "tiny").iloc[0]["run_id"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    assert main(["export", run_id, str(tmp_path / "out"), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty: give --force" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
    assert main(["export", run_id, str(tmp_path / "out"), "--force", "--results", str(results)]) == 0
    assert not (tmp_path / "out" / "mine.txt").exists() and (tmp_path / "out" / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing staged is left beside it


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    folder.write(ablate.build_model({**SHAPE, "mixer": "mha"}), None, tmp_path / "out", "card")
    return tmp_path / "out"


def _config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        target = config["ablate"] if key in SHAPE else config
        target[key] = value
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda p: _config(p, model_type="llama"), "holds no ablate model: its config.json has model_type 'llama'"),
        (lambda p: _config(p, d_model=48), "has shape (64, 32); its hyperparameters give (64, 48)"),
        (lambda p: (p / "model.safetensors").write_bytes(b"junk"), "cannot read"),
        (lambda p: (p / "config.json").unlink(), "has no config.json"),
    ],
)
def test_a_folder_that_is_not_an_ablate_models_is_refused_in_one_line(exported, tmp_path, capsys, damage, said):
    damage(exported)
    store = ["--results", str(tmp_path / "results")]
    assert main(["import", "hf", str(exported), *store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err
    assert not (tmp_path / "results").exists()  # nothing recorded

"""The `kernel: torch | fla` option of the recurrent mixers: which implementation runs where, the
refusals, and (where a GPU and flash-linear-attention are present) fla's fused kernels against
ablate's own forms on the same weights."""

import pytest
import torch

import ablate
from ablate.core.errors import AblateError
from ablate.mixers import registry
from ablate.nn import ops
from ablate.nn.ops import kernels

FAMILIES = [n for n in registry.variants() if "kernel" in registry.mixer_options(n, {})]  # those with an fla op
SHAPE = {"vocab_size": 64, "context": 200, "d_model": 64, "n_layers": 2, "n_heads": 2, "qkv_dim": 64}


def model(name: str, kernel: str | None, device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    options = {} if kernel is None else {"kernel": kernel}
    return ablate.build_model({**SHAPE, "mixer": name, "mixer_options": options}, device=device)


def tokens(device: str = "cpu") -> torch.Tensor:
    return torch.randint(0, SHAPE["vocab_size"], (2, SHAPE["context"]), generator=torch.Generator().manual_seed(1)).to(
        device
    )


@pytest.fixture
def fla_present(monkeypatch):
    """As if flash-linear-attention were installed: the option checks and the dispatch only ask."""
    monkeypatch.setattr(kernels, "fla_installed", lambda: True)


def test_an_unknown_kernel_is_refused_with_the_choices():
    with pytest.raises(
        AblateError, match=r"option 'kernel': Input should be 'torch' or 'fla', got 'flash' \(did you mean 'fla'\?\)"
    ):
        model("gla", "flash")


def test_kernel_fla_without_fla_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(kernels, "fla_installed", lambda: False)
    with pytest.raises(
        AblateError,
        match=r'mixer .deltanet. option .kernel.: Value error, fla needs flash-linear-attention: pip install "ablate\[fla\]"',
    ):
        model("deltanet", "fla")


@pytest.mark.parametrize("name", FAMILIES)
def test_off_cuda_the_unset_kernel_is_torch_even_with_fla_installed(name, fla_present):
    """Same weights, same tokens: the default and `kernel: torch` give identical logits on the CPU."""
    x = tokens()
    assert torch.equal(model(name, None)(x), model(name, "torch")(x))


def test_kernel_fla_on_the_cpu_is_refused_in_one_line(fla_present):
    with pytest.raises(AblateError, match="kernel fla runs on CUDA tensors only, not on cpu: use kernel: torch"):
        model("mamba2", "fla")(tokens())


def test_kernel_fla_plans_on_the_meta_device_with_the_torch_form(fla_present):
    """Planning and the FLOP count build every model on the meta device, where no kernel runs."""
    logits = model("gated-deltanet", "fla", device="meta")(tokens("meta"))
    assert logits.shape == (2, SHAPE["context"], SHAPE["vocab_size"])


def test_the_default_kernel_is_recorded_by_device(fla_present, monkeypatch):
    assert kernels.default_kernel("cuda:0") == "fla"
    assert kernels.default_kernel("cpu") == "torch"
    monkeypatch.setattr(kernels, "fla_installed", lambda: False)
    assert kernels.default_kernel("cuda") == "torch"


on_gpu_with_fla = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.fla_installed()),
    reason="fla's kernels run on CUDA only, with flash-linear-attention installed",
)


def logits_and_grads(net, x, autocast: bool):
    net.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = net(x)
    logits.float().square().mean().backward()
    return logits.detach().float(), {n: p.grad.detach() for n, p in net.named_parameters()}


FLOAT32 = [n for n in FAMILIES if n != "deltanet"]  # fla's chunk_delta_rule refuses float32
# (tolerance on the logits' largest difference, relative to their largest value; on the worst cosine of a gradient)
TOLERANCE = {"float32": (1e-2, 0.999), "bf16": (5e-2, 0.99)}


@on_gpu_with_fla
@pytest.mark.parametrize("name, precision", [(n, "float32") for n in FLOAT32] + [(n, "bf16") for n in FAMILIES])
def test_fla_kernels_agree_with_the_torch_forms(name, precision):
    """The same weights through the whole model, forward and every parameter's gradient: fla's
    fused kernels against ablate's ops, in float32 and under the trainer's bf16 autocast. A
    context of 200 is no multiple of any chunk."""
    x, autocast = tokens("cuda"), precision == "bf16"
    ours, ours_grads = logits_and_grads(model(name, "torch", "cuda"), x, autocast)
    try:
        theirs, their_grads = logits_and_grads(model(name, "fla", "cuda"), x, autocast)
    except RuntimeError as e:
        if "#640" not in str(e):
            raise
        pytest.skip(f"fla refuses this op here: {str(e).splitlines()[0]}")
    rel = ((ours - theirs).abs().max() / ours.abs().max()).item()
    worst = min(
        torch.nn.functional.cosine_similarity(
            ours_grads[n].flatten().float(), their_grads[n].flatten().float(), dim=0
        ).item()
        for n in ours_grads
    )
    print(f"{name} {precision}: logits max relative difference {rel:.2e}, worst gradient cosine {worst:.6f}")
    max_rel, min_cosine = TOLERANCE[precision]
    assert rel < max_rel
    assert worst > min_cosine


def gla_inputs(T: int = 100):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, T, 2, 8, generator=g) for _ in range(3))
    return q, k, v, torch.nn.functional.logsigmoid(torch.randn(2, T, 2, 8, generator=g))


def chunked(*args, **kwargs):
    return kernels.torch_op(ops.chunk_gla, 16)(*args, **kwargs)


def recurrent(*args, **kwargs):
    return kernels.torch_op(ops.recurrent_gla)(*args, **kwargs)


def test_the_probe_passes_a_kernel_that_computes_the_same_outputs_and_gradients():
    assert kernels.disagreement(chunked, recurrent, gla_inputs(), {}) is None


def test_the_probe_catches_a_wrong_output():
    def off(*args, **kwargs):
        return chunked(*args, **kwargs)[0] * 1.2, None

    problem = kernels.disagreement(off, recurrent, gla_inputs(), {})
    assert problem == "differs from the torch form (output: error ratio 0.2 > 0.05)"


def test_the_probe_catches_a_wrong_gradient_behind_a_right_output():
    """The failure the probe exists for: fla's gated backward on Hopper with some Tritons."""

    def half_grad_of_k(q, k, v, g, **kwargs):
        return chunked(q, k * 0.5 + (k * 0.5).detach(), v, g, **kwargs)

    problem = kernels.disagreement(half_grad_of_k, recurrent, gla_inputs(), {})
    assert problem.startswith("differs from the torch form (gradient of input 1: error ratio 0.5")


def test_the_probe_reports_a_kernel_that_raises_in_one_line():
    def refuses(*args, **kwargs):
        raise RuntimeError("backward is broken here, see #640\nsecond line")

    problem = kernels.disagreement(refuses, recurrent, gla_inputs(), {})
    assert problem == "failed (RuntimeError: backward is broken here, see #640)"


def test_the_probe_runs_inside_inference_mode():
    with torch.inference_mode():
        assert kernels.disagreement(chunked, recurrent, gla_inputs(), {}) is None


def test_an_unsound_default_kernel_falls_back_to_torch_with_one_line_once(monkeypatch, capsys):
    calls = []

    def broken(op):
        def call(*args, **kwargs):
            calls.append(op.__name__)
            return chunked(*args, **kwargs)[0] * 2, None

        return call

    monkeypatch.setattr(kernels, "default_kernel", lambda device: "fla")
    monkeypatch.setattr(kernels, "fla_op", broken)
    monkeypatch.setattr(kernels, "_probed", {})
    want, _ = kernels.run_op(ops.chunk_gla, "torch", *gla_inputs())
    for _ in range(3):
        got, _ = kernels.run_op(ops.chunk_gla, None, *gla_inputs())
        assert torch.equal(got, want)
    assert calls == ["chunk_gla"]  # the probe's one call
    line = "kernel: fla's chunk_gla differs from the torch form (output: error ratio 1 > 0.05) on this device; "
    assert capsys.readouterr().err.splitlines() == [line + "running ablate's torch form instead"]


def test_a_sound_default_kernel_is_chosen_after_its_probe(monkeypatch, capsys):
    calls = []

    def sound(op):
        def call(*args, **kwargs):
            calls.append(op.__name__)
            return chunked(*args, **kwargs)

        return call

    monkeypatch.setattr(kernels, "default_kernel", lambda device: "fla")
    monkeypatch.setattr(kernels, "fla_op", sound)
    monkeypatch.setattr(kernels, "_probed", {})
    for _ in range(2):
        kernels.run_op(ops.chunk_gla, None, *gla_inputs())
    assert calls == ["chunk_gla"] * 3  # the probe, then both calls
    assert capsys.readouterr().err == ""


def test_a_run_trained_after_a_failed_probe_names_the_ops_that_ran_in_torchs_form(tmp_path, monkeypatch, own_store):
    """Its default_kernel param says fla; the tag says which ops did not run it."""
    import mlflow

    from ablate.cli import main
    from tests.conftest import TINY_STUDY, write_study

    monkeypatch.setattr(
        kernels, "_probed", {("chunk_gla", torch.device("cpu")): False, ("chunk_delta_rule", None): True}
    )
    study = TINY_STUDY.replace("seeds: [0, 1]", "seeds: [0]").replace(
        "  - {name: aft, model: {mixer: aft-simple, ffn: false}}\n", ""
    )
    assert main(["run", str(write_study(tmp_path, study)), "--results", str(tmp_path / "results")]) == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    (run,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        if "ablate.role" not in r.data.tags
    ]
    assert run.data.tags["ablate.fla_fallbacks"] == "chunk_gla"

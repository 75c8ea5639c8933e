"""The `kernel: torch | fla` option of the recurrent mixers: which implementation runs where, the
refusals, and (where a GPU and flash-linear-attention are present) fla's fused kernels against
ablate's own forms on the same weights."""

import pytest
import torch

import ablate
from ablate.errors import AblateError
from ablate.nn.ops import kernels

FAMILIES = ["linear-attn", "based", "gla", "deltanet", "gated-deltanet", "mamba2"]
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
        AblateError, match=r"gla kernel must be one of torch, fla, got 'flash' \(did you mean 'fla'\?\)"
    ):
        model("gla", "flash")


def test_kernel_fla_without_fla_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(kernels, "fla_installed", lambda: False)
    with pytest.raises(
        AblateError, match=r'deltanet kernel fla needs flash-linear-attention: pip install "ablate\[fla\]"'
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

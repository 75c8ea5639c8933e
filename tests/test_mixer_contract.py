"""The contract a mixer meets (stated once, in `ablate.mixers.registry.Mixer`'s docstring),
checked for every registered one: what adding one file to architectures/ must satisfy. A
broken mixer is told which rule it breaks."""

import pytest
import torch

import ablate
from ablate.core.errors import AblateError, first_line
from ablate.inference import audit
from ablate.mixers import registry
from ablate.mixers.registry import Mixer, register

CONTEXT = 128
SHAPE = {"vocab_size": 64, "context": CONTEXT, "d_model": 32, "n_layers": 1, "n_heads": 2, "qkv_dim": 32}


def violations(name: str, options: dict | None = None, backbone: dict | None = None) -> list[str]:
    """The rules the mixer breaks at its default options (or these), on the default backbone (or
    these switches), each as 'rule: what happened'."""
    config = {**SHAPE, **(backbone or {}), "mixer": name, "mixer_options": options or {}}
    found = []
    try:  # plan, budgets and FLOPs build every trial on the meta device, without data
        meta = ablate.build_model(config, device="meta")
        meta(torch.zeros(1, CONTEXT, dtype=torch.long, device="meta"))
    except Exception as e:  # noqa: BLE001 - any failure breaks the rule; the message names it
        found.append(f"meta: its forward cannot run on the meta device ({first_line(e)})")
    torch.manual_seed(0)
    model = ablate.build_model(config)
    mixer = model.blocks[0].mixer
    leak = audit.model_leak(model)
    if mixer.causal and not audit.is_causal(leak):
        found.append(f"causal: a logit moves by {leak:.1e} when a later token or another sequence changes")
    model.train()
    model(torch.randint(0, SHAPE["vocab_size"], (2, CONTEXT))).logsumexp(-1).mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    if dead:
        found.append(f"gradients: no gradient reaches {', '.join(dead)}")
    found += _residual_maps(model)
    found += _derived_buffers(model)
    found += _decoding(config) if mixer.cannot_decode is None else []
    try:  # a planned trial carries its options resolved, defaults included, and is checked again
        registry.mixer_options(name, model.cfg.mixer_options)
    except AblateError as e:
        found.append(f"options: its resolved options fail their own types ({e})")
    for option in registry.mixer_options(name, {}):
        try:
            registry.mixer_options(name, {option: object()})
            found.append(f"options: {option}={object()!r} is accepted; annotate the option's type")
        except AblateError as e:
            if option not in str(e):
                found.append(f"options: the error for a wrong {option} does not name it: {e}")
    return found


def _derived_buffers(model) -> list[str]:
    """A buffer no state dict holds (persistent=False) is computed again by its module's
    `derived_buffers()`, as a loader that restores no buffers (transformers') has it done."""
    found = []
    for module_name, module in model.named_modules():
        derived = getattr(module, "derived_buffers", dict)()
        for name in module._non_persistent_buffers_set:
            if name not in derived or not torch.equal(derived[name], getattr(module, name).cpu()):
                found.append(f"buffers: {module_name}.{name} is not saved, and derived_buffers() does not give it")
    return found


def _residual_maps(model) -> list[str]:
    """The declared residual maps are the mixer's own linear maps, and silence it when zeroed
    (a mixer that runs its own residual steps then returns its input): every output path is
    declared, so the GPT-2 init scales them all."""
    mixer = model.blocks[0].mixer
    maps = mixer.residual_maps()
    own = [m for m in mixer.modules() if isinstance(m, torch.nn.Linear)]
    if not maps or not all(any(m is o for o in own) for m in maps):
        return [f"residual maps: residual_maps() must return the mixer's own nn.Linear maps, got {maps}"]
    x = torch.randn(1, CONTEXT, SHAPE["d_model"])
    with torch.no_grad():
        for m in maps:
            m.weight.zero_()
        y = mixer(x)
    left = (y - x if mixer.adds_residual else y).abs().max().item()
    if left > 0:
        return [f"residual maps: with its declared maps zeroed the output still moves by {left:.1e}; declare them all"]
    return []


PROMPT = CONTEXT // 3 + 1  # a prompt that ends inside a chunk, followed by steps over several


def _decoding(config: dict) -> list[str]:
    """Prefill then one token at a time gives the full forward's logits (to 1e-9 in float64, 1e-4
    in float32) from a prompt and from the first token, and the state holds what state_size()
    says (or grows with the sequence, where it says None)."""
    torch.manual_seed(0)
    model = ablate.build_model(config).eval()
    idx = torch.randint(0, SHAPE["vocab_size"], (2, CONTEXT))
    found, carried = [], {}
    with torch.no_grad():
        for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
            model.to(dtype)
            full = model(idx)
            for prompt in (PROMPT, 1):
                logits, decoding = model.prefill(idx[:, :prompt])
                carried[prompt] = decoding.numbers()
                steps = [logits]
                for t in range(prompt, CONTEXT):
                    logits, decoding = model.step(idx[:, t : t + 1], decoding)
                    steps.append(logits)
                gap = (torch.cat(steps, dim=1) - full).abs().max().item()
                if not gap <= tolerance:
                    found.append(
                        f"decode: a prefill of {prompt} then steps to {CONTEXT} gives logits {gap:.1e} from "
                        f"the forward's in {str(dtype).removeprefix('torch.')} (tolerance {tolerance:.0e})"
                    )
    declared, held = model.state_size(), decoding.numbers()
    if declared is not None and held != declared:
        found.append(f"decode: state_size() says {declared:,} numbers per sequence; the decoder carries {held:,}")
    if declared is None and not held > carried[PROMPT]:
        found.append(f"decode: state_size() is None, but the state stays at {held:,} numbers: declare it")
    return found


SHIPPED = [n for n in ablate.variants() if registry.mixer_class(n).__module__.startswith("ablate.architectures.")]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_mixer_meets_the_contract(name):
    assert violations(name) == []


@pytest.mark.parametrize(
    "name, options",
    [
        ("linear-attn", {"conv_size": 4}),
        ("gla", {"conv_size": 4}),
        ("deltanet", {"conv_size": None}),
        ("based", {"conv_size": 4, "window": 4}),
        ("moa", {"experts": ["mha", {"aft-local": {"window": 8}}, "gated-deltanet"], "top_k": 2}),
    ],
)
def test_options_that_change_the_computation_keep_the_contract(name, options):
    assert violations(name, options) == []


class _Branching(Mixer):
    """A branch on the data's values, an option nobody annotated, a second output path (`skip`)
    that it does not declare as a residual map, and a buffer no loader restores (`sign`)."""

    def __init__(self, cfg, layer_idx, *, scale=2):
        super().__init__()
        self.proj = torch.nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.skip = torch.nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.register_buffer("sign", torch.ones(cfg.d_model), persistent=False)
        self.scale = scale

    def residual_maps(self):
        return [self.proj]

    def forward(self, x):
        return (self.proj(x) * self.scale if x.mean() > 0 else self.proj(x)) + self.skip(x) * self.sign


class _Drifting(Mixer):
    """A running mean whose decoding step counts each new token twice, and whose state_size()
    says less than its state holds."""

    cannot_decode = None

    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.out = torch.nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x):
        return self.out(x.cumsum(1) / torch.arange(1, x.size(1) + 1, dtype=x.dtype, device=x.device)[:, None])

    def prefill(self, x):
        return self(x), {"sum": x.sum(1)}

    def step(self, x, state, pos):
        total = state["sum"] + 2 * x[:, 0]
        return self.out(total[:, None] / (pos + 1)), {"sum": total}

    def state_size(self):
        return 1


@pytest.fixture
def scratch_registry(monkeypatch):
    """Mixers registered in this test only: the registry is restored after it."""
    monkeypatch.setattr(registry, "_MIXERS", dict(registry._MIXERS))


def test_a_broken_mixer_is_told_which_rules_it_breaks(scratch_registry):
    register("test-branching")(_Branching)
    branching = violations("test-branching")
    assert [v.split(":")[0] for v in branching] == ["meta", "residual maps", "buffers", "options"]
    assert "meta device" in branching[0] and "declare them all" in branching[1] and "scale=" in branching[3]
    assert "blocks.0.mixer.sign is not saved" in branching[2]


@pytest.mark.parametrize(
    "name, options",
    [
        ("mha", {"window": 16}),
        ("mha", {"rope": False, "qk_norm": False}),
        ("aft-local", {"window": 8}),
        ("aft-simple", {"qk_norm": True}),
        ("retnet", {"form": "recurrent"}),
        ("linear-attn", {"normalize": False}),
        ("mamba2", {"conv_size": 2, "chunk_size": 16}),
        ("hybrid", {"pattern": [{"mha": {"window": 8}}]}),
        ("hybrid-heads", {"aft_heads": 1, "window": 8}),
        ("retention", {"recurrence": 1, "chunk_size": 16}),
    ],
)
def test_options_that_change_the_state_decode_exactly(name, options):
    assert _decoding({**SHAPE, "mixer": name, "mixer_options": options}) == []


def test_learned_positions_decode_exactly():
    assert _decoding({**SHAPE, "mixer": "mha", "pos": "learned"}) == []


def test_a_mixer_that_decodes_wrongly_is_told_so(scratch_registry):
    register("test-drifting")(_Drifting)
    found = violations("test-drifting")
    assert [v.split(":")[0] for v in found] == ["decode"] * 5
    assert "a prefill of 43 then steps to 128" in found[0] and "in float64" in found[0] and "float32" in found[2]
    assert "state_size() says 1 numbers per sequence; the decoder carries 32" in found[4]


def test_a_mixer_that_cannot_decode_says_why_and_the_model_refuses_in_one_line():
    model = ablate.build_model({**SHAPE, "mixer": "retention", "mixer_options": {"scope": "sequence"}})
    assert "later positions" in model.cannot_decode
    with pytest.raises(AblateError, match="retention cannot decode from a state: scope sequence"):
        model.prefill(torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize(
    "config, limit",
    [({"mixer": "mha", "pos": "learned"}, "the learned position table"), ({"mixer": "aft-full"}, "aft-full's table")],
)
def test_decoding_stops_where_a_learned_table_ends(config, limit):
    model = ablate.build_model({**SHAPE, "context": 8, **config}).eval()
    _, decoding = model.prefill(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(AblateError, match=f"^{limit}.* ends at position 8: this model cannot decode 9 positions"):
        model.step(torch.zeros(1, 1, dtype=torch.long), decoding)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_no_mixer_takes_a_number_that_is_not_finite(value):
    """A NaN or infinite option (moa's aux_weight: .nan) would only fail the trial at its first loss."""
    floats = [(n, o) for n in SHIPPED for o, d in registry.mixer_options(n, {}).items() if isinstance(d, float)]
    assert ("moa", "aux_weight") in floats
    for name, option in floats:
        with pytest.raises(AblateError, match=f"option '{option}': Input should be a finite number"):
            registry.mixer_options(name, {option: value})

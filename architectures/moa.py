"""moa: Strawberry's planned mixture of attention experts, the local/global hybrid made per token.

Each layer holds E expert mixers (by default windowed softmax attention, local, and aft-simple,
global). A router reads each token alone, r_t = softmax(W_r x_t), keeps its top-k experts and
    y_t = Σ_{e ∈ top-k(r_t)} r_{t,e} · expert_e(x)_t
Every expert runs over the whole sequence (a sequence mixer needs every earlier token, routed
to it or not); the router decides which outputs each token takes. It reads x_t only, so the
mixture is causal when its experts are.

Load balance as in the Switch Transformer (Fedus et al. 2021, arXiv:2101.03961):
    aux = α · E · Σ_e f_e · P_e
f_e the share of the batch's routing choices that went to e, P_e its mean router probability;
α·1 when the load is even. The trainer adds it to the loss and logs it as train_aux_loss.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ablate.core.errors import AblateError
from ablate.mixers import registry
from ablate.mixers.registry import Mixer, Size, register

DEFAULT_EXPERTS = ({"mha": {"window": 64}}, "aft-simple")


@register("moa")
class MixtureOfAttention(Mixer):
    """Mixture of attention experts: a causal per-token router weights the top-k of E mixers (default local mha, AFT).

    E expert mixers per layer, each over the whole sequence; a router softmax(W x_t) on each
    token alone keeps its top-k experts and weights their outputs by its probabilities; Switch
    Transformer's load-balancing loss α·E·Σ f_e·P_e (`aux_weight`) is added to the training loss
    and logged as `train_aux_loss` (train_loss stays the cross-entropy); budgets count every
    expert. Experts are names or `{name: {options}}`.
    """

    cannot_decode = None  # unless a part cannot: then its reason, per instance

    def __init__(
        self, cfg, layer_idx, *, experts: list | tuple = DEFAULT_EXPERTS, top_k: Size = 1, aux_weight: float = 0.01
    ):
        super().__init__()
        if not isinstance(experts, list | tuple) or len(experts) < 2:
            raise AblateError(f"moa experts must be a list of at least 2 mixers, got {experts!r}")
        entries = [registry.mixer_entry(entry, "moa experts") for entry in experts]
        nested = {name for name, _ in entries} & {"moa", "hybrid"}
        if nested:
            raise AblateError(f"moa experts are single mixers, not {', '.join(sorted(nested))}")
        if top_k > len(entries):
            raise AblateError(f"moa top_k {top_k} is more than its {len(entries)} experts")
        if aux_weight < 0:
            raise AblateError(f"moa aux_weight must be ≥ 0, got {aux_weight}")
        self.experts = nn.ModuleList(registry.mixer_class(name)(cfg, layer_idx, **options) for name, options in entries)
        if any(expert.adds_residual for expert in self.experts):
            raise AblateError("moa experts must return an update to the stream (retention's stacks add their own)")
        self.router = nn.Linear(cfg.d_model, len(entries), bias=False)
        self.top_k, self.aux_weight = top_k, aux_weight
        self.causal = all(expert.causal for expert in self.experts)
        self.cannot_decode = next((e.cannot_decode for e in self.experts if e.cannot_decode), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixed(x, [expert(x) for expert in self.experts])

    def prefill(self, x):
        """The output, and each expert's state (the router reads each token alone: it keeps none)."""
        outputs, states = zip(*(expert.prefill(x) for expert in self.experts))
        return self.mixed(x, list(outputs)), list(states)

    def step(self, x, state, pos):
        outputs, states = zip(*(expert.step(x, s, pos) for expert, s in zip(self.experts, state)))
        return self.mixed(x, list(outputs)), list(states)

    def decode_limit(self):
        return min((n for n in (e.decode_limit() for e in self.experts) if n is not None), default=None)

    def mixed(self, x: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        """The experts' outputs weighted by the router's top-k gates (and, training, the balance loss set)."""
        probs = F.softmax(self.router(x), dim=-1)  # (B, T, E)
        chosen, picked = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, picked, chosen)
        if self.training:
            share = torch.zeros_like(probs).scatter(-1, picked, 1.0).mean((0, 1)) / self.top_k
            self.aux_loss = self.aux_weight * len(self.experts) * (share * probs.mean((0, 1))).sum()
        return (torch.stack(outputs, dim=-1) * gates.unsqueeze(2)).sum(-1)  # (B, T, d_model, E) weighted

    def residual_maps(self):
        return [m for expert in self.experts for m in expert.residual_maps()]

    def state_size(self):
        sizes = [expert.state_size() for expert in self.experts]
        return None if None in sizes else sum(sizes)

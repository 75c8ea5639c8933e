"""Every section of a study, typed: what a study YAML may say, checked before anything runs.

Validation here needs pydantic only (no torch), so `ablate plan` can refuse a bad study at once.
What needs a built model (a mixer's options, the sizes, the budget) is checked by `study.load`.
"""

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ablate.core.errors import did_you_mean
from ablate.core.overlay import overlay
from ablate.core.questions import Budget, DecodeConfig, EvalConfig, Expectation, checked_contrast, checked_expectation

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"


# what the results folder holds beside the studies' own folders: a study of that name would collide
STORE_ENTRIES = re.compile(r"(mlflow|optuna)\.db(-\w+)?|cache|checkpoints|artifacts")


def name_problem(value: str) -> str | None:
    """What is wrong with a study name, or None: it names a folder of the results, beside the store."""
    if not NAME.fullmatch(value):  # fullmatch: `$` would let a final newline through
        return f"must be {NAME_RULE}"
    if STORE_ENTRIES.fullmatch(value):
        return "must not name one of the results folder's own entries (mlflow.db, optuna.db, cache, checkpoints, artifacts)"
    return None


def _safe_name(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# A backbone preset: the switches it sets, each overridable in the same `model:` section.
PRESETS: dict[str, dict[str, Any]] = {
    "strawberry": {},  # Strawberry's (ModelConfig's defaults): see the fields below
    # GPT-2 as nanoGPT writes it, biases off as its train.py sets them (`bias: true`: on, norms' too)
    "nanogpt": {
        "pos": "learned",
        "norm": "layer",
        "qk_norm": False,
        "ffn_type": "gelu",
        "init": "gpt2",
        "embed_norm": False,
    },
    # a strong small backbone of the kind nanochat and modded-nanogpt train: Strawberry's rotary,
    # QK-norm and normed embedding, with an untied head, ReLU² and zero-started residual maps
    "modern": {"tie_embeddings": False, "ffn_type": "relu2", "init": "modern"},
}
# a study's backbone where its model section names no preset (ModelConfig's own defaults, which
# saved models load with, stay Strawberry's); chosen by measurement, see docs/backbones.md
DEFAULT_PRESET = "modern"
# switches added after the first studies ran: left out of a trial's key at their defaults, so that a
# study of Strawberry's backbone keeps its keys (and resumes) across their arrival
LATER_SWITCHES = ("pos", "norm", "norm_bias", "tie_embeddings", "bias", "dropout", "qk_norm")


class ModelConfig(BaseModel):
    """A model, as `build_model` takes it (and `ablate plan --json` prints per trial); its
    defaults are Strawberry's backbone, which `preset` replaces with another's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mixer: str
    mixer_options: dict[str, Any] = Field(default_factory=dict)
    preset: Literal["strawberry", "nanogpt", "modern"] | None = Field(
        None, description="a backbone's switches at once (PRESETS); the keys given beside it win"
    )
    vocab_size: StrictInt = Field(8192, gt=1)
    context: StrictInt = Field(256, gt=0)
    d_model: StrictInt = Field(96, gt=0)
    n_layers: StrictInt = Field(4, gt=0)
    n_heads: StrictInt = Field(6, gt=0)
    qkv_dim: StrictInt = Field(384, gt=0, validate_default=True)  # so that n_heads alone is checked against it
    ffn: bool = True
    ffn_dim: StrictInt = Field(384, gt=0)
    ffn_type: Literal["swiglu", "gelu", "relu2"] = "swiglu"
    init: Literal["seed", "gpt2", "modern"] = "seed"
    embed_norm: bool = Field(True, description="norm the embedding output before the first block, as Strawberry does")
    pos: Literal["rope", "alibi", "learned", "none"] = Field(
        "rope",
        description="rope: rotary in the attention mixers; alibi: ALiBi's linear biases (mha); learned: GPT-2's "
        "position embedding; none",
    )
    norm: Literal["rms", "layer"] = Field("rms", description="rms: without a weight; layer: LayerNorm, with one")
    norm_bias: bool = Field(False, description="LayerNorm's bias (default: as `bias`)")
    tie_embeddings: bool = Field(True, description="the head is the embedding; false: a head of its own")
    bias: bool = Field(False, description="biases in the backbone's and mha's linear maps")
    dropout: float = Field(0.0, ge=0, lt=1, description="after the embedding, the attention weights, each output")
    qk_norm: bool = Field(True, description="the attention mixers norm q and k (mha with a gain per head)")

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        """The preset's switches under the keys given; LayerNorm's bias following `bias`."""
        if not isinstance(data, dict):
            return data
        data = {**PRESETS.get(data.get("preset") or "strawberry", {}), **data}
        if "norm_bias" not in data and data.get("norm") == "layer":
            data["norm_bias"] = data.get("bias", False)
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.norm_bias and self.norm != "layer":
            raise ValueError("norm_bias needs norm: layer (an RMS norm here has no weight and no bias)")
        return self

    @field_validator("qkv_dim")
    @classmethod
    def _heads_divide_qkv(cls, qkv_dim: int, info: ValidationInfo) -> int:
        n_heads = info.data.get("n_heads")
        if n_heads and qkv_dim % n_heads:
            raise ValueError(f"qkv_dim {qkv_dim} is not divisible by n_heads {n_heads}")
        return qkv_dim

    @property
    def head_dim(self) -> int:
        return self.qkv_dim // self.n_heads

    def switches(self) -> dict[str, Any]:
        """The backbone's switches, as a preset sets them."""
        return {k: getattr(self, k) for k in ("ffn_type", "init", "embed_norm", *LATER_SWITCHES)}


# train settings that change how a trial runs, not what it computes (to rounding): not in its key,
# so that a study resumes on another number of devices
HOW_IT_RUNS = frozenset({"devices", "micro_steps", "shard"})


class TrainConfig(BaseModel):
    """The `train:` section of a study (defaults: Strawberry's recipe)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: StrictInt = Field(10_000, gt=0)
    batch_size: StrictInt = Field(16, gt=0)
    lr: float = Field(2e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = Field(1e-8, gt=0, description="AdamW's epsilon")
    weight_decay: float = Field(1e-3, ge=0)
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="muon: torch's Muon for the blocks' matrices, AdamW for the embedding and the rest"
    )
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    warmup: StrictInt = Field(500, ge=0, validate_default=True)  # the default too must fit in `steps`
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine", description="after warm-up: cosine decay, or constant then a cosine cooldown (warmup-stable-decay)"
    )
    cooldown_frac: float = Field(0.4, gt=0, le=1, description="wsd: the share of all steps spent cooling down")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the schedule decays to lr·min_lr_ratio")
    grad_clip: float | None = Field(1.0, gt=0)
    eval_every: StrictInt = Field(250, gt=0)
    eval_batches: StrictInt = Field(20, gt=0)
    log_every: StrictInt = Field(10, gt=0, description="steps between host reads of the train loss")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    compile: bool = False
    max_loss: float | None = Field(
        None, gt=0, description="stop a trial whose train loss goes above this (NaN and inf always stop it)"
    )
    checkpoint_evals: StrictInt = Field(1, ge=0, description="write a checkpoint every this many evals (0: never)")
    tokens_per_param: float | None = Field(
        None,
        gt=0,
        le=10_000,  # 500 times Chinchilla's 20: past it, a typo
        description="train each model on this many tokens per budgeted parameter (sets steps)",
    )
    devices: StrictInt = Field(1, ge=1, description="processes training each trial together (one GPU each)")
    micro_steps: StrictInt = Field(
        1, ge=1, validate_default=True, description="each process's rows of a batch in parts, gradients accumulated"
    )

    shard: bool = Field(
        False, description="FSDP: each process holds 1/devices of the parameters, gradients and optimizer state"
    )

    @field_validator("shard")
    @classmethod
    def _shard_needs_ranks(cls, shard: bool, info: ValidationInfo) -> bool:
        if shard and info.data.get("devices") == 1:
            raise ValueError("shards a model over the processes of train.devices, which is 1")
        if shard and info.data.get("optimizer") == "muon":
            raise ValueError("works with optimizer adamw: torch's Muon on sharded matrices steps unlike on whole ones")
        return shard

    @field_validator("micro_steps")
    @classmethod
    def _batch_divides(cls, micro_steps: int, info: ValidationInfo) -> int:
        batch, devices = info.data.get("batch_size"), info.data.get("devices")
        if batch and devices and batch % (devices * micro_steps):
            raise ValueError(f"batch_size {batch} is not divisible by devices × micro_steps = {devices * micro_steps}")
        return micro_steps

    @field_validator("warmup")
    @classmethod
    def _warmup_fits(cls, warmup: int, info: ValidationInfo) -> int:
        steps = info.data.get("steps")
        if steps and warmup > steps:
            raise ValueError(f"warmup ({warmup}) is longer than steps ({steps})")
        return warmup

    @field_validator("cooldown_frac")  # given only: its default is no setting
    @classmethod
    def _cooldown_needs_wsd(cls, cooldown_frac: float, info: ValidationInfo) -> float:
        if info.data.get("schedule", "wsd") != "wsd":
            raise ValueError(f"applies to schedule: wsd, not {info.data['schedule']} (it would do nothing)")
        return cooldown_frac


class DataConfig(BaseModel):
    """The `data:` section of a study."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "stdlib",
        min_length=1,
        description="'stdlib' (the Python standard library's source), a text file, a directory, a glob, "
        "jsonl or parquet files, a dataset saved with save_to_disk, or a token array (.npy, or .bin of uint16)",
    )
    train: str | None = Field(None, min_length=1, description="a train token array, with `val` (nanoGPT's train.bin)")
    val: str | None = Field(None, min_length=1, description="the val token array that goes with `train`")
    tokenizer: str = Field(
        "bpe",
        min_length=1,
        description="how text becomes tokens: bpe, char, byte, gpt2 (through tiktoken), or a tokenizer.json "
        "of your own (or a transformers tokenizer folder holding one)",
    )
    text_field: str = Field("text", min_length=1, description="the text's column in jsonl, parquet and datasets")
    split: Literal["pieces", "tail"] = Field("pieces", description="val: random whole pieces, or the stream's tail")
    vocab_size: int | None = Field(
        None, ge=2, le=2**32, description="default: 8192 (bpe, token arrays), 256 (byte), the text's characters (char)"
    )
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    max_bytes: int | None = Field(None, gt=0, description="use only the first documents up to this size")

    @model_validator(mode="after")
    def _consistent(self):
        if (self.train is None) != (self.val is None):
            raise ValueError("give both train and val (token arrays, as nanoGPT's train.bin and val.bin)")
        if self.train is not None and "source" in self.model_fields_set:
            raise ValueError("give either source or train and val, not both")
        if self.tokenizer == "bpe" and self.vocab_size is not None and self.vocab_size <= 256 and self.is_text:
            raise ValueError(f"a BPE needs vocab_size > 256 (its 256 bytes and <|endoftext|>), got {self.vocab_size}")
        if self.tokenizer == "byte" and self.vocab_size is not None and self.vocab_size < 256:
            raise ValueError(f"the byte tokenizer needs vocab_size ≥ 256, got {self.vocab_size}")
        if self.tokenizer in ("char", "byte") and not self.is_text:
            raise ValueError(f"tokenizer {self.tokenizer!r} applies to text; token arrays are used as they are")
        return self

    @property
    def is_text(self) -> bool:
        return self.train is None and Path(self.source).suffix not in (".npy", ".bin")


class TaskConfig(BaseModel):
    """`data:` for a synthetic task (defaults sized for a CPU). Which tasks there are, and what
    each needs of these settings, is the tasks' own business (`ablate.data.tasks`)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="the task's name: mqar, in_context_recall, ... (ablate.data.tasks)")
    vocab: int = Field(64, ge=16, le=65536)
    seq_len: int = Field(64, ge=8)
    num_kv_pairs: int = Field(4, gt=0, description="mqar: pairs to recall")
    power_a: float = Field(0.01, gt=0, le=1, description="mqar: power law of the query gaps (1: uniform)")
    random_non_queries: bool = Field(True, description="mqar: random tokens, not 0, between the queries")
    num_keys: int = Field(8, gt=1, description="the recall tasks and memorization: distinct keys")
    noise_vocab: int = Field(8, gt=0, description="noisy_recall: noise tokens")
    frac_noise: float = Field(0.2, ge=0, lt=1, description="noisy_recall: share of the sequence that is noise")
    k_motif_size: int = Field(2, gt=0, description="fuzzy_recall: tokens per key")
    v_motif_size: int = Field(2, gt=0, description="fuzzy_recall: tokens per value")
    num_tokens_to_copy: int = Field(8, gt=0, description="selective_copy: tokens to copy")
    haystack: str = Field(
        "noise", min_length=1, description="passkey, niah, variable_tracking: noise, or text ('stdlib' or a text file)"
    )
    needle: Literal["single", "multikey", "multivalue", "multiquery"] = Field("single", description="niah: RULER's")
    num_needles: int = Field(4, gt=1, description="niah multikey, multivalue, multiquery: needles")
    needle_len: int = Field(5, gt=0, description="passkey, niah: digits of the number to retrieve")
    depths: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
        min_length=1,
        description="passkey, niah: the needle depths (0: start, 1: end) the val examples are spread over",
    )
    num_chains: int = Field(2, ge=1, le=10, description="variable_tracking: chains, one of them asked for")
    num_hops: int = Field(4, ge=1, description="variable_tracking: names bound along each chain")
    eval_seq_lens: list[Annotated[StrictInt, Field(ge=8)]] | None = Field(
        None, min_length=1, description="lengths past seq_len the final models are scored at too (val_exact_at/T)"
    )
    n_train: int | None = Field(None, gt=0, description="a fixed training set of this many; default: fresh every step")
    n_val: int = Field(512, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _longer(self):
        short = [n for n in self.eval_seq_lens or () if n < self.seq_len]
        if short:
            raise ValueError(f"eval_seq_lens must be ≥ seq_len ({self.seq_len}): got {short[0]}")
        return self

    @property
    def vocab_size(self) -> int:
        return self.vocab


ModelOverlay, TrainOverlay = overlay(ModelConfig), overlay(TrainConfig)


class VariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model: ModelOverlay = Field(default_factory=ModelOverlay, description="the study's model, overridden")
    train: TrainOverlay = Field(default_factory=TrainOverlay, description="the study's train, overridden")
    scale: Literal["d_model", "n_layers", "ffn_dim", "qkv_dim", "width"] | None = Field(
        None,
        description="the dimension that absorbs the study's budget (default d_model); width: d_model with "
        "qkv_dim and ffn_dim in their written proportion to it",
    )
    search: dict[str, Any] | bool | None = Field(
        None, description="this variant's search, merged over the study's; false: none (default: the study's)"
    )

    _name = field_validator("name")(_safe_name)


def _data_kind(value) -> str:
    has_task = isinstance(value, TaskConfig) or (isinstance(value, dict) and "task" in value)
    return "task" if has_task else "corpus"


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    data: Annotated[
        Annotated[DataConfig, Tag("corpus")] | Annotated[TaskConfig, Tag("task")], Discriminator(_data_kind)
    ] = Field(default_factory=DataConfig, description="a corpus (source: ...) or a synthetic task (task: ...)")
    model: ModelOverlay = Field(default_factory=ModelOverlay, description="every variant's model (ModelConfig)")
    train: TrainOverlay = Field(default_factory=TrainOverlay, description="every variant's training (TrainConfig)")
    variants: list[VariantConfig] = Field(min_length=1)
    seeds: list[Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]] = Field(default_factory=lambda: [0], min_length=1)
    budget: Budget | None = None
    search: dict[str, Any] | None = Field(None, description="an Optuna search for every variant (see SearchConfig)")
    baseline: str | None = None
    allow_leaky: bool = Field(False, description="train variants that fail the causality audit")
    contrasts: list[Annotated[tuple[str, str], AfterValidator(checked_contrast)]] = Field(
        default_factory=list,
        description="pairs [a, b]: a tested against b, paired by seed, Holm over the pairs; in a scaling study "
        "at every size, or at one where named NAME@SIZE",
    )
    expect: list[Annotated[Expectation, AfterValidator(checked_expectation)]] = Field(
        default_factory=list, description="verdicts the study should reach"
    )
    decode: DecodeConfig | None = Field(None, description="what each final model costs to run (DecodeConfig)")
    eval: EvalConfig | None = Field(None, description="lm-evaluation-harness tasks for each final model (EvalConfig)")

    _name = field_validator("name")(_safe_name)

    @property
    def scaling(self) -> bool:
        """Whether every variant is trained at several sizes (NAME@SIZE names one of them)."""
        return self.budget is not None and self.budget.scaling

    @model_validator(mode="after")
    def _consistent(self):
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique, got {self.seeds}")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not a variant{did_you_mean(self.baseline, names)}")
        return self

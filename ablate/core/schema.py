"""The MLflow schema: the name of every tag, param and metric ablate writes, used by every writer
and every reader, so that searching one constant finds both. No MLflow here: the trainer and the
study schema use the names too."""

from ablate.core.errors import AblateError


class Tag:
    """Run tags; `STUDY` and `RECORD` are also the study experiment's."""

    STUDY = "ablate.study"  # a run's study; on an experiment it marks an ablate study
    RECORD = "ablate.study_record"  # the experiment's StudyRecord (JSON): what compare needs of the study
    ROLE = "ablate.role"  # a run that is not a trial (Role), else absent
    VARIANT = "ablate.variant"
    SEED = "ablate.seed"
    TRIAL_KEY = "ablate.trial_key"  # the hash of the trial's whole configuration: what a rerun skips
    PHASE = "ablate.phase"  # Phase
    FAMILY = "ablate.family"  # the variant's mixer
    FFN = "ablate.ffn"  # whether its blocks have an FFN
    CONTRAST = "ablate.contrast"  # the study's contrasts the variant is part of
    CAUSAL = "ablate.causal"
    MAX_LEAK = "ablate.max_leak"
    DATA_FINGERPRINT = "ablate.data_fingerprint"
    STUDY_DIR = "ablate.study_dir"  # the folder a study's relative data paths start from (for ablate eval)
    PYTHON_VERSION = "ablate.python_version"
    SCALED = "ablate.scaled"  # in a scaling study: the variant as written (the run's is NAME@SIZE)
    SIZE = "ablate.size"  # ... and the budget's size it was solved at
    FAILURE = "ablate.failure"  # why a run failed
    FAILED_STEP = "ablate.failed_step"
    RESUMED_FROM_STEP = "ablate.resumed_from_step"
    WORKER = "ablate.worker"  # host:pid of the worker that trains it (the last, when resumed)
    CUDA_VISIBLE_DEVICES = "ablate.cuda_visible_devices"  # the GPUs its executor gave that worker
    RESTARTED = "ablate.restarted_from_step_0"  # an unreadable checkpoint was set aside
    OPTUNA_STUDY = "ablate.optuna_study"
    OPTUNA_TRIAL = "ablate.optuna_trial"
    OPTUNA_STATE = "ablate.optuna_state"  # the Optuna state a search trial's run ended in
    BEST = "ablate.best."  # + a searched key, on a variant's parent run: the search's best value
    SOURCE_CHECKPOINT = "ablate.source_checkpoint"  # an import's file
    EVALUATES = "ablate.evaluates"  # an evaluation's run
    DECODE_STOPPED = "ablate.decode_stopped"  # where decoding from state stopped short of the asked contexts
    LENGTH_METHOD = "ablate.length_method"  # how val_loss@T was measured (ablate.inference.lengths)
    LENGTH_STOPPED = "ablate.length_stopped"  # why the longer lengths were not measured
    FLA_FALLBACKS = "ablate.fla_fallbacks"  # fla ops its worker runs in torch's form: their probe failed there


class Role:
    STUDY, VARIANT = "study", "variant"  # the parent runs that group a study's trials
    IMPORT, EVALUATION = "import", "evaluation"


class Phase:
    FINAL, SEARCH = "final", "search"


class Param:
    VARIANT = "variant"
    SEED = "seed"
    N_PARAMS = "n_params"
    N_PARAMS_NON_EMBEDDING = "n_params_non_embedding"
    FLOPS_PER_TOKEN = "flops_per_token"
    STATE_SIZE = "state_size"
    BUDGET = "budget"  # the size the budget held equal, in words
    DEVICE = "device"
    DEFAULT_KERNEL = "default_kernel"  # what a mixer's unset `kernel` option runs there: torch or fla
    DATA_FINGERPRINT = "data.fingerprint"
    UNIGRAM_ENTROPY = "data.unigram_entropy"
    CHANCE_ACCURACY = "data.chance_accuracy"
    MODEL = "model"  # prefix: model.d_model, model.n_layers, ... (every ModelConfig key)
    TRAIN = "train"  # prefix: train.steps, train.lr, ... (every TrainConfig key)
    DATA = "data"  # prefix: data.source, ... (every key of the study's data section)


class Metric:
    VAL_LOSS = "val_loss"
    VAL_ACCURACY = "val_accuracy"
    TRAIN_LOSS = "train_loss"
    TRAIN_AUX_LOSS = "train_aux_loss"  # a mixer's auxiliary objective (moa's load balance), beside train_loss
    LR = "lr"
    TOKENS_PER_S = "tokens_per_s"
    MEAN_TOKENS_PER_S = "mean_tokens_per_s"
    TRAIN_TIME_S = "train_time_s"
    GRAD_NORM = "grad_norm"
    CLIPPED_FRACTION = "clipped_fraction"
    PREFIX_VAL_LOSS = "prefix_val_loss"  # a leaking model's honest loss
    VAL_LOSS_AT_PREFIX_POSITIONS = "val_loss_at_prefix_positions"
    MAX_LEAK = "max_leak"
    N_SEEDS = "n_seeds"  # on a variant's parent, beside each metric's mean over its seeds ...
    CI95_LOW, CI95_HIGH = "_ci95_low", "_ci95_high"  # ... and its interval: METRIC + suffix
    RANK = "rank/block"  # + block index: effective rank after the block
    ATTN_ENTROPY = "attn_entropy/block"  # + block index
    BLOCK_GRAD_NORM = "grad_norm/block"  # + block index
    REPORTED = "reported_{}_loss"  # an import's own estimates: train, val
    PREFILL_TOKENS_PER_S = "prefill_tokens_per_s"  # decoding from state (a study's `decode:`) ...
    DECODE_TOKENS_PER_S = "decode_tokens_per_s"
    DECODE_MS_PER_TOKEN = "decode_ms_per_token/"  # ... + the context: decode_ms_per_token/4096
    STATE_BYTES = "state_bytes/"  # + the context
    VAL_LOSS_AT = "val_loss_at/"  # + a length: val_loss_at/2048 (ablate.inference.lengths), and .../positions_A-B
    VAL_ACCURACY_AT = "val_accuracy_at/"  # + a length: a task's answer tokens right (ablate.inference.lengths) ...
    VAL_EXACT_AT = "val_exact_at/"  # ... and its examples answered whole; a needle's also .../depth_P (percent)
    LM_EVAL = "lm_eval/{task}/{metric}"  # lm-evaluation-harness's: lm_eval/arc_easy/acc


def tag_column(name: str) -> str:
    """The column of a tag in `mlflow.search_runs`'s frame."""
    return f"tags.{name}"


def param_column(name: str) -> str:
    return f"params.{name}"


def metric_column(name: str) -> str:
    return f"metrics.{name}"


def quoted(name: str) -> str:
    """A name as MLflow's search syntax and its UI's column keys quote it."""
    return f"`{name}`"


HIGHER_IS_BETTER = {
    Metric.TOKENS_PER_S,
    Metric.MEAN_TOKENS_PER_S,
    Metric.PREFILL_TOKENS_PER_S,
    Metric.DECODE_TOKENS_PER_S,
}  # and every accuracy
LOWER_IS_BETTER = {Metric.TRAIN_TIME_S}  # and every loss
LOWER_IS_BETTER_PREFIXES = (Metric.DECODE_MS_PER_TOKEN, Metric.STATE_BYTES)
HIGHER_IS_BETTER_PREFIXES = (Metric.VAL_ACCURACY_AT, Metric.VAL_EXACT_AT)
# lm-eval's metrics by their own names (lm_eval/TASK/NAME[_FILTER]): scores, and surprises
LM_EVAL_HIGHER = ("acc", "acc_norm", "acc_mutual_info", "exact_match", "f1", "em", "mcc", "contains", "bleu", "rouge")
LM_EVAL_LOWER = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def lower_is_better(metric: str, given: bool | None = None) -> bool:
    """The direction of a metric: as given, else known for losses, accuracy and speed."""
    if given is not None:
        return given
    higher = metric in HIGHER_IS_BETTER or metric.endswith("accuracy") or metric.startswith(HIGHER_IS_BETTER_PREFIXES)
    if higher or _lm_eval_named(metric, LM_EVAL_HIGHER):
        return False
    if metric in LOWER_IS_BETTER or "loss" in metric or metric.startswith(LOWER_IS_BETTER_PREFIXES):
        return True
    if _lm_eval_named(metric, LM_EVAL_LOWER):
        return True
    raise AblateError(f"is a higher {metric!r} better or worse? say --higher-is-better or --lower-is-better")


def _lm_eval_named(metric: str, names: tuple[str, ...]) -> bool:
    """Whether an lm-eval metric (lm_eval/TASK/NAME, NAME perhaps with a filter after it) is one of `names`."""
    parts = metric.split("/")
    return (
        len(parts) == 3 and parts[0] == "lm_eval" and any(parts[2] == n or parts[2].startswith(n + "_") for n in names)
    )

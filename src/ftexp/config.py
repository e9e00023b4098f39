"""Typed schemas for every config group, and the one function that checks a composed config.

Group YAML files stay plain; `validate()` merges each group onto its dataclass so an unknown
key, a wrong type or a missing value fails here, before anything heavy is imported, with one
line that names the key and what would be valid. Kept free of torch/transformers imports so
`--cfg job` and `--help` stay fast.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    ValidationError,
)

from ftexp.errors import ConfigError

MISSING = "???"


@dataclass
class ModelConfig:
    # Hub id, local directory, or `package:<module>/<subdir>` for weights shipped in a pip package.
    name_or_path: str = MISSING
    # Tokenizer source when it differs from the weights (defaults to name_or_path).
    tokenizer: Optional[str] = None
    # Build the architecture from this config with random weights instead of loading weights
    # (tiny test models). Keys are those of the transformers config class of `model_type`.
    random_init: Optional[dict[str, Any]] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16 — dtype the backbone is loaded in
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2; None = default
    # Run Python code shipped with the model repository (custom architectures). Off: such models
    # are refused with a message; read the code before turning this on.
    trust_remote_code: bool = False
    # Load pickled weights (pytorch_model.bin, *.pt), which can run code when unpickled, when the
    # model has no safetensors. Off: such models are refused. Not in the model YAML files, so set
    # it with a leading '+': +model.allow_pickled_weights=true.
    allow_pickled_weights: bool = False
    revision: Optional[str] = None
    # Jinja chat template for tokenizers that have none (conversation data, data.messages_column).
    chat_template: Optional[str] = None
    # Recompute activations in the backward pass instead of storing them (non-reentrant): less
    # memory for some more compute.
    gradient_checkpointing: bool = False


@dataclass
class QuantConfig:
    method: str = "none"  # none | 8bit (LLM.int8) | 4bit (QLoRA-style NF4/FP4), via bitsandbytes
    quant_type: str = "nf4"  # 4bit: nf4 | fp4
    double_quant: bool = True  # 4bit: quantize the quantization constants too (~0.4 bit/param)
    compute_dtype: str = "bfloat16"  # 4bit: dtype the matmuls run in
    storage_dtype: str = "uint8"  # 4bit: packed-weight dtype; = compute_dtype for FSDP sharding
    llm_int8_threshold: float = 6.0  # 8bit: outlier threshold for mixed int8/fp16 matmul
    skip_modules: Optional[list[str]] = None  # modules kept unquantized
    # Cast only norm weights to fp32 for stability; never the whole model (that would undo the
    # memory saving, as peft.prepare_model_for_kbit_training does).
    upcast_norms: bool = True


@dataclass
class StrategyConfig:
    """How training is spread over devices (builders/strategy.py). Each option's file lists only
    the keys its strategy reads."""
    name: str = "auto"  # auto (one device) | ddp | fsdp | deepspeed
    # ddp: let DDP skip parameters that got no gradient this step (slower; some adapters need it).
    find_unused_parameters: bool = False
    # fsdp: full_shard | shard_grad_op | hybrid_shard | no_shard
    sharding: str = "full_shard"
    auto_wrap: bool = True  # fsdp: wrap each transformer block (found from the model) as a unit
    activation_checkpointing: bool = False  # fsdp: recompute each block's activations
    cpu_offload: bool = False  # fsdp: keep sharded parameters and gradients in CPU memory
    state_dict: str = "full"  # fsdp checkpoints: full (one file) | sharded (a folder per save)
    stage: int = 2  # deepspeed: ZeRO stage 2 (optimizer + gradients sharded) or 3 (+ parameters)
    offload_optimizer: bool = False  # deepspeed: optimizer state in CPU memory
    offload_parameters: bool = False  # deepspeed stage 3: parameters in CPU memory


@dataclass
class TaskConfig:
    # classification: one class per row, or several when the label column holds lists
    # (multi-label) | regression: a number per row | causal_lm: supervised fine-tuning on
    # prompt → response | pretrain: next-token prediction on raw text
    name: str = "classification"
    # How the backbone's hidden states become one vector per text:
    # auto (mean for encoders, last non-padding token for decoders) | cls | mean | last
    pooling: str = "auto"
    head_dropout: float = 0.1
    # Multi-label: a class is predicted when its sigmoid probability reaches this.
    threshold: float = 0.5
    # Metric the best checkpoint is chosen by, and whether larger is better.
    monitor: str = "val/acc"
    monitor_mode: str = "max"
    # causal_lm: also learn to predict the prompt tokens (off: loss on the response only).
    train_on_prompt: bool = False
    # causal_lm / pretrain: generate from this many fixed validation prompts at each evaluation.
    sample_generations: int = 3
    # causal_lm / pretrain: NEFTune — uniform noise of this scale on the input embeddings while
    # training (alpha / sqrt(seq_len * dim) per element); null turns it off. 5 is the paper's pick.
    neftune_noise_alpha: Optional[float] = None


@dataclass
class GenerationConfig:
    """Decoding settings for sample generations during training and for `ftexp.generate`."""
    max_new_tokens: int = 128
    do_sample: bool = False  # false: greedy decoding
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0


@dataclass
class OptimizerConfig:
    # adamw (fused on GPU where Lightning allows) | adamw_8bit (bitsandbytes) | adafactor
    name: str = "adamw"
    # A number, `auto` (the documented default of the adapter method, see builders/optim.py) or
    # `find` (an LR range test before training; its plot goes to the run dir).
    learning_rate: Any = 2e-4
    weight_decay: float = 0.01  # never applied to biases and norm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    fused: Any = "auto"  # auto | true | false — the fused CUDA AdamW kernel


@dataclass
class SchedulerConfig:
    # linear / cosine: warmup then decay to 0 | constant: flat | constant_with_warmup
    name: str = "linear"
    warmup_fraction: float = 0.0  # share of the total optimizer steps spent warming up
    warmup_steps: Optional[int] = None  # a step count instead (wins over warmup_fraction)
    # Multiply the learning rate by the number of training processes (linear) or its root (sqrt).
    learning_rate_scaling: str = "none"


@dataclass
class DataConfig:
    path: str = MISSING  # CSV / TSV / JSON / JSONL / Parquet file
    format: str = "auto"  # auto (from the extension) | csv | tsv | json | jsonl | parquet
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    # Text files cannot hold lists: with a separator (e.g. "|"), "a|b" means labels a and b
    # (multi-label). JSON / JSONL / Parquet list cells need none.
    label_separator: Optional[str] = None
    # Column holding train / validation / test per row; None → random split by probabilities.
    split_column: Optional[str] = None
    split_probabilities: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])
    split_seed: int = 42
    max_length: int = 128
    # A number, or `auto`: the largest power of two that fits in memory, at most max_batch_size
    # and the training set's size, found before training.
    batch_size: Any = 32
    max_batch_size: int = 256
    eval_batch_size: int = 64
    num_workers: int = 0
    # Keep at most this many training rows (None = all); handy for smoke runs.
    max_train_samples: Optional[int] = None
    # -- causal_lm / pretrain -------------------------------------------------------------------
    # Prompt and response text built from columns: "{instruction}" is the row's instruction.
    prompt_template: Optional[str] = None
    response_template: Optional[str] = None
    # An empty placeholder (e.g. no `input`): keep (render it empty) | drop_paragraph (drop the
    # blank-line-separated paragraph holding it) | error.
    empty_fields: str = "drop_paragraph"
    # Conversation data instead: a column of [{role, content}, …] rendered by the tokenizer's
    # chat template (model.chat_template sets one); loss on assistant turns only.
    messages_column: Optional[str] = None
    # Samples longer than max_length: cut (keep the first max_length tokens) | drop.
    truncation: str = "cut"
    # Several samples per row, each attending only to itself (position ids restart per sample).
    packing: bool = False
    # -- caches (under paths.cache_dir, keyed by a content hash of all they depend on) ------------
    # Reuse tokenized splits across runs with the same data file contents, tokenizer and settings.
    cache_tokenized: bool = True
    # adapter=frozen only: run the frozen encoder once, store the pooled embeddings, and train the
    # head on them; later runs with the same key do no encoder passes at all.
    cache_encoder_embeddings: bool = False


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"  # per node; under torchrun / SLURM taken from the launcher
    num_nodes: int = 1
    # 32 | bf16-mixed | 16-mixed | bf16-true | auto (bf16-mixed where the hardware has bf16 units)
    precision: str = "auto"
    max_epochs: int = 1
    max_steps: int = -1
    val_check_interval: Any = 1.0
    log_every_n_steps: int = 10
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    deterministic: bool = False
    enable_progress_bar: bool = True
    compile: bool = False  # torch.compile the network (in place: checkpoint keys are unchanged)
    # At each evaluation also score the whole training set in eval mode (train_eval/* metrics);
    # off: train/* are running values over the epoch's training batches.
    evaluate_training_set: bool = False


@dataclass
class CallbacksConfig:
    checkpoint: bool = True  # keep the best model (by task.monitor) in checkpoints/best.ckpt
    rich_progress: bool = True
    # Stop when task.monitor has not improved by min_delta for this many evaluations (null: off).
    early_stopping_patience: Optional[int] = None
    early_stopping_min_delta: float = 0.0
    # Full training state in checkpoints/last.ckpt (for resume=<run dir>) every N optimizer steps
    # and/or every M minutes of training; both null: never.
    resume_every_n_steps: Optional[int] = None
    resume_every_minutes: Optional[float] = 5.0
    on_nonfinite: str = "stop"  # NaN/inf gradients: stop (naming the step) | skip the step
    nonfinite_max_skips: int = 10  # skip: stop anyway after this many skipped steps


@dataclass
class LoggerConfig:
    csv: bool = True  # metrics per step in csv/metrics.csv
    # Weights & Biases (logger=wandb; `pip install 'ftexp[wandb]'`), files in <run dir>/wandb/.
    wandb: bool = False
    # auto: online when WANDB_API_KEY is set, else offline (no network) | offline | online | disabled
    wandb_mode: str = "auto"
    wandb_project: str = "ftexp"
    wandb_entity: Optional[str] = None  # null: the API key's default entity
    wandb_name: Optional[str] = None  # null: <study>-<trial> for sweep trials, else the run dir's name
    wandb_group: Optional[str] = None  # null: the study name for sweep trials, else no group
    wandb_tags: list[str] = field(default_factory=list)  # besides one `group:option` per chosen group


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING  # content-addressed caches shared by runs (tokenized data, embeddings)


@dataclass
class TrialConfig:
    """Set by the Optuna sweeper for each trial it launches (left empty otherwise), so the run
    knows its trial: it reports `monitor` to the study after every evaluation and stops when the
    pruner says so."""
    study_name: Optional[str] = None
    storage: Optional[str] = None  # Optuna storage URL (sqlite:///…, journal file, …)
    number: Optional[int] = None   # the trial's number in the study
    monitor: Optional[str] = None  # metric reported for pruning (null: no pruning)


@dataclass
class FtexpConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # Open: each method has its own keys (PEFT's), checked against the PEFT config class when
    # the job starts, before any weights load (see builders/adapter.py).
    adapter: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    quant: QuantConfig = field(default_factory=QuantConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    # A run directory to continue from its last checkpoint (`last`: the newest run in outputs/runs).
    resume: Optional[str] = None
    seed: int = 42
    # Print full tracebacks instead of one-line errors.
    debug: bool = False


# Adapter methods built into ftexp; every other adapter.method is a PEFT method.
NON_PEFT_ADAPTERS = ("none", "frozen", "freeze")
# PEFT methods that prepend virtual tokens: packed rows and their position ids do not fit them.
PROMPT_LEARNING_ADAPTERS = ("prefix_tuning", "prompt_tuning", "llama_adapter")
LM_TASKS = ("causal_lm", "pretrain")  # tasks trained on next-token prediction

# Values a key may take, checked after types. Kept beside the schema so the message can list them.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "adapter.method": (*NON_PEFT_ADAPTERS, "lora", "dora", "adalora", "ia3", "loha", "lokr",
                       "oft", "boft", "prefix_tuning", "prompt_tuning", "llama_adapter", "peft"),
    "quant.method": ("none", "8bit", "4bit"),
    "quant.quant_type": ("nf4", "fp4"),
    "quant.compute_dtype": ("float32", "bfloat16", "float16"),
    "quant.storage_dtype": ("uint8", "float32", "bfloat16", "float16"),
    "strategy.name": ("auto", "ddp", "fsdp", "deepspeed"),
    "strategy.sharding": ("full_shard", "shard_grad_op", "hybrid_shard", "no_shard"),
    "strategy.state_dict": ("full", "sharded"),
    "task.name": ("classification", "regression", "causal_lm", "pretrain"),
    "task.pooling": ("auto", "cls", "mean", "last"),
    "task.monitor_mode": ("max", "min"),
    "optimizer.name": ("adamw", "adamw_8bit", "adafactor"),
    "callbacks.on_nonfinite": ("stop", "skip"),
    "scheduler.name": ("linear", "cosine", "constant", "constant_with_warmup"),
    "scheduler.learning_rate_scaling": ("none", "linear", "sqrt"),
    "data.format": ("auto", "csv", "tsv", "json", "jsonl", "parquet"),
    "data.empty_fields": ("keep", "drop_paragraph", "error"),
    "data.truncation": ("cut", "drop"),
    "logger.wandb_mode": ("auto", "offline", "online", "disabled"),
    "trainer.precision": ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true"),
}


def did_you_mean(word: str, options: list[str] | tuple[str, ...], prefix: str = "") -> str:
    """' Did you mean '<prefix>x'?' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ""


def _schema_keys(schema: type) -> list[str]:
    return [f.name for f in fields(schema)]


# Keys that moved to another group: the error names the new place.
MOVED_KEYS = {"task.learning_rate": "optimizer.learning_rate",
              "task.weight_decay": "optimizer.weight_decay"}


def _walk_unknown_keys(node: Any, schema: type, prefix: str) -> None:
    """Raise on the first key of `node` that `schema` does not declare, with a did-you-mean."""
    if not isinstance(node, DictConfig) or not is_dataclass(schema):
        return
    known = {f.name: f for f in fields(schema)}
    for key in node.keys():
        full = f"{prefix}{key}"
        if full in MOVED_KEYS:
            raise ConfigError(f"unknown config key '{full}': it is now '{MOVED_KEYS[full]}'.")
        if key not in known:
            valid = _schema_keys(schema)
            raise ConfigError(
                f"unknown config key '{full}'."
                f"{did_you_mean(str(key), valid, prefix)} "
                f"Valid keys under '{prefix[:-1] or 'the top level'}': {', '.join(valid)}."
            )
        sub = known[key].default_factory() if callable(known[key].default_factory) else None
        if is_dataclass(sub):
            _walk_unknown_keys(node._get_node(key), type(sub), f"{full}.")


def _missing_keys(node: DictConfig, prefix: str) -> list[str]:
    """Keys still set to ??? (like OmegaConf.missing_keys, but without resolving interpolations)."""
    found = []
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            found += _missing_keys(child, f"{prefix}{key}.")
        elif OmegaConf.is_missing(node, key):
            found.append(f"{prefix}{key}")
    return found


def _expected_type(full_key: str) -> str:
    """The schema's declared type of a dotted key, readable: 'int', 'float or null', …"""
    schema: Any = FtexpConfig
    declared: Any = None
    for part in full_key.split("."):
        hints = typing.get_type_hints(schema) if is_dataclass(schema) else {}
        if part not in hints:
            return ""
        declared = schema = hints[part]
    args = [a for a in typing.get_args(declared) if a is not type(None)]
    if typing.get_origin(declared) is typing.Union and len(args) == 1:
        return f"{getattr(args[0], '__name__', args[0])} or null"
    return getattr(declared, "__name__", str(declared))


def validate(cfg: DictConfig, resolve: bool = True) -> DictConfig:
    """Return `cfg` merged onto the schema (typed, struct), or raise ConfigError with one line.

    `resolve=False` skips interpolations, for checks made before Hydra has set up a run
    (`${hydra:…}` values exist only inside a job).
    """
    user = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    _walk_unknown_keys(user, FtexpConfig, "")
    schema = OmegaConf.structured(FtexpConfig)
    try:
        typed = OmegaConf.merge(schema, user)
    except ValidationError as err:
        key = err.full_key or "?"
        raise ConfigError(
            f"bad value for '{key}': expected {_expected_type(key)}, got {err.value!r}."
            if hasattr(err, "value") and _expected_type(key)
            else f"bad value for '{key}': {str(err.msg).splitlines()[0]}."
        ) from err
    except ConfigKeyError as err:  # pragma: no cover - _walk_unknown_keys catches these first
        raise ConfigError(f"unknown config key '{err.full_key}'.") from err

    missing = _missing_keys(typed, "")
    if missing:
        raise ConfigError(
            f"missing required value '{missing[0]}': set it on the command line, "
            f"e.g. {missing[0]}=<value>."
        )
    try:
        if resolve:
            OmegaConf.resolve(typed)
    except (InterpolationResolutionError, MissingMandatoryValue) as err:
        raise ConfigError(f"cannot resolve '{err.full_key}': {str(err.msg).splitlines()[0]}") from err

    for key, allowed in CHOICES.items():
        value = OmegaConf.select(typed, key)
        if value is not None and str(value) not in allowed:
            raise ConfigError(
                f"'{key}={value}' is not a valid choice.{did_you_mean(str(value), allowed)} "
                f"Choices: {', '.join(allowed)}."
            )
    from ftexp.config_checks import check_semantics  # late: it imports this module

    check_semantics(typed)
    OmegaConf.set_struct(typed, True)
    return typed

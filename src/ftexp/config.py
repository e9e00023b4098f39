"""The typed schema of every config group: the one place its keys, types, defaults, allowed
values and own checks live. The YAML options under conf/ hold only what differs from here.

`FtexpConfig` is registered in Hydra's ConfigStore as `ftexp_schema`, the first entry of
conf/config.yaml's defaults list, so every group option is composed onto its typed schema.
Open groups (task, adapter, logger, callbacks.extra) are typed later: a task's keys by the schema
its registry entry names (ftexp.tasks.registry), an adapter's by PEFT, a `_target_` node's by its
constructor. Each schema's `check(node)` looks at that group alone; rules across groups live in
ftexp.config_rules, and ftexp.validation runs both. Kept free of torch/transformers imports so
`--cfg job` and `--help` stay fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from ftexp.errors import ConfigError, did_you_mean  # noqa: F401  (did_you_mean: re-exported)

MISSING = "???"
DTYPES = ("float32", "bfloat16", "float16")


def _is_number(value: object, integer: bool = False) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


class GroupSchema:
    """What every group schema may declare besides its fields: the values a key may take
    (checked after types, listed in the message) and `check`, the group's own rules."""
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    # A `_target_` group: keys beyond the fields are the target's own arguments, checked against
    # its signature when the job starts (builders/targets.py) instead of refused here.
    TAKES_TARGET_ARGUMENTS: ClassVar[bool] = False

    @staticmethod
    def check(node: DictConfig) -> None:
        """Rules within this group that types cannot express; raise ConfigError with one line."""


# model.rope_scaling types (transformers' rope_type) and the keys each takes besides the type
# and `factor`.
ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "linear": (), "dynamic": (),
    "yarn": ("original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "truncate")}


def _check_rope_scaling(scaling: Any) -> None:
    """model.rope_scaling from the config alone; whether the model has RoPE is checked when the
    job starts (builders/backbone.check_rope_scaling_fits)."""
    if not scaling:
        return
    kind = scaling.get("rope_type", scaling.get("type"))
    types = tuple(ROPE_SCALING_KEYS)
    if kind not in ROPE_SCALING_KEYS:
        raise ConfigError(f"model.rope_scaling.rope_type={kind} is not a RoPE scaling ftexp applies."
                          f"{did_you_mean(str(kind), types)} Choices: {', '.join(types)}.")
    factor = scaling.get("factor")
    if not (_is_number(factor) and factor > 1):
        raise ConfigError(f"model.rope_scaling.factor={factor} must be a number above 1 (the context "
                          "stretch, e.g. 2.0 for twice the trained length); model.rope_scaling={} "
                          "keeps the model's own positions.")
    known = ["rope_type", "type", "factor", *ROPE_SCALING_KEYS[kind]]
    for key in scaling:
        if key not in known:
            raise ConfigError(f"model.rope_scaling.{key} is not a setting of rope_type={kind}."
                              f"{did_you_mean(str(key), known, 'model.rope_scaling.')} "
                              f"Valid keys: {', '.join(known)}.")


@dataclass
class ModelConfig(GroupSchema):
    # Hub id, local directory, or `package:<module>/<subdir>` for weights shipped in a pip package.
    name_or_path: str = MISSING
    # Tokenizer source when it differs from the weights (defaults to name_or_path).
    tokenizer: Optional[str] = None
    # Build the architecture from this config with random weights instead of loading weights
    # (tiny test models). Keys are those of the transformers config class of `model_type`.
    random_init: Optional[dict[str, Any]] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16 — dtype the backbone is loaded in
    # auto: flash_attention_2 on CUDA with bf16/fp16 weights when flash-attn is installed and the
    # architecture supports it, else transformers' choice (sdpa where supported, else eager) |
    # eager | sdpa | flash_attention_2 | any other transformers attention; null: transformers' choice.
    attn_implementation: Optional[str] = "auto"
    # Run Python code shipped with the model repository (custom architectures). Off: such models
    # are refused with a message; read the code before turning this on.
    trust_remote_code: bool = False
    # Load pickled weights (pytorch_model.bin, *.pt), which can run code when unpickled, when the
    # model has no safetensors. Off: such models are refused; model.allow_pickled_weights=true.
    allow_pickled_weights: bool = False
    revision: Optional[str] = None
    # Jinja chat template for tokenizers that have none (conversation data, data.messages_column).
    chat_template: Optional[str] = None
    # RoPE scaling for longer contexts: {rope_type: linear | dynamic | yarn, factor: > 1, …}
    # (yarn also takes original_max_position_embeddings, attention_factor, beta_fast, beta_slow,
    # mscale, mscale_all_dim, truncate). Written into the model config's rope_parameters, so
    # predict, generate and export rebuild the model with it. RoPE models only. Empty: the model's
    # own positions (a dict rather than null: OmegaConf cannot merge a command-line dict into a
    # null one; `+model.rope_scaling={rope_type:linear,factor:2.0}` sets it).
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    # Tokens added to the tokenizer as special tokens (new chat-template markers, tool tags, …):
    # the embeddings (and an untied LM head) grow to hold them, and under a PEFT adapter their new
    # rows train too (PEFT trainable_token_indices); tokens the vocabulary has already are left alone.
    add_special_tokens: list[str] = field(default_factory=list)
    # Recompute activations in the backward pass instead of storing them (non-reentrant): less
    # memory for some more compute.
    gradient_checkpointing: bool = False
    # A finished ftexp run directory (config.yaml + checkpoints/best.ckpt) whose trained network
    # this run starts from (SFT → DPO, LM → classifier): its base is rebuilt as that run built it
    # (itself from an init_from, if it had one) and its weights loaded. The model group must name
    # the same base (name_or_path, random_init); model.tokenizer / chat_template, when null, are
    # that run's. The run dir must stay where it is: predict, generate and export rebuild from it.
    init_from: Optional[str] = None
    # What becomes of the init_from run's adapter: merge (into its base weights; this run's
    # adapter, if any, starts fresh on top) | continue (its weights are loaded into this run's
    # adapter and keep training; adapter must then be the same method and keys as that run's).
    init_from_adapter: str = "merge"
    # Causal-LM tasks: compute the token loss from the final hidden states this many tokens at a
    # time (tasks/lm_loss.py), so the (batch, seq, vocab) logits never exist; null = full logits.
    # Same loss and gradients; architectures not known to lm_loss.HEADS keep the full logits.
    loss_chunk_tokens: Optional[int] = 1024
    # Fused CUDA loss kernels for causal-LM losses: none | liger (Liger's fused linear
    # cross-entropy + its RMSNorm/RoPE/SwiGLU patches; extra `liger`) | cut_cross_entropy (extra `cce`).
    kernels: str = "none"

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"dtype": DTYPES,
                                                     "init_from_adapter": ("merge", "continue"),
                                                     "kernels": ("none", "liger", "cut_cross_entropy")}

    @staticmethod
    def check(model: DictConfig) -> None:
        if model.random_init is not None and "model_type" not in model.random_init:
            raise ConfigError("model.random_init needs a 'model_type' (e.g. bert, llama) to know "
                              "which architecture to build.")
        chunk = model.get("loss_chunk_tokens")
        if chunk is not None and chunk < 1:
            raise ConfigError(f"model.loss_chunk_tokens={chunk} must be a positive number of tokens "
                              "(e.g. 1024), or null for the full-logits loss.")
        _check_rope_scaling(model.get("rope_scaling"))
        tokens = list(model.get("add_special_tokens") or [])
        if any(not isinstance(t, str) or not t.strip() for t in tokens) or len(set(tokens)) != len(tokens):
            raise ConfigError(f"model.add_special_tokens={tokens} must be distinct, non-empty strings, "
                              "e.g. ['<|tool|>','<|/tool|>'].")


@dataclass
class QuantConfig(GroupSchema):
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

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "method": ("none", "8bit", "4bit"), "quant_type": ("nf4", "fp4"), "compute_dtype": DTYPES,
        "storage_dtype": ("uint8", *DTYPES)}


@dataclass
class StrategyConfig(GroupSchema):
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

    # The strategy stays a name read by builders/strategy.py rather than a `_target_`: building
    # it needs the model's block classes and the precision, wiring the YAML cannot express.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "name": ("auto", "ddp", "fsdp", "deepspeed"),
        "sharding": ("full_shard", "shard_grad_op", "hybrid_shard", "no_shard"),
        "state_dict": ("full", "sharded")}


@dataclass
class TaskConfig(GroupSchema):
    """Keys every task has. Each task's registry entry (ftexp.tasks.registry) names the schema of
    its own keys: one of the subclasses below."""
    name: str = MISSING  # an entry of ftexp.tasks.registry
    # Metric the best checkpoint, early stopping and sweep pruning follow.
    monitor: str = "val/loss"
    # max | min; null: from the metric (lower is better for loss, perplexity, mse, mae).
    monitor_mode: Optional[str] = None

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"monitor_mode": ("max", "min")}



@dataclass
class HeadTaskConfig(TaskConfig):
    """classification / regression: backbone → pooled vector → dropout → linear head."""
    monitor: str = "val/acc"
    # How the backbone's hidden states become one vector per text:
    # auto (mean for encoders, last non-padding token for decoders) | cls | mean | last
    pooling: str = "auto"
    head_dropout: float = 0.1
    # Multi-label: a class is predicted when its sigmoid probability reaches this.
    threshold: float = 0.5

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **TaskConfig.CHOICES, "pooling": ("auto", "cls", "mean", "last")}

    @staticmethod
    def check(task: DictConfig) -> None:
        if not 0.0 < task.threshold < 1.0:
            raise ConfigError(f"task.threshold={task.threshold} must be in (0, 1).")
        if not 0.0 <= task.head_dropout < 1.0:
            raise ConfigError(f"task.head_dropout={task.head_dropout} must be in [0, 1).")


@dataclass
class LanguageModelTaskConfig(TaskConfig):
    """causal_lm / pretrain: next-token cross-entropy."""
    # Also learn to predict the prompt tokens (off: loss on the response only).
    train_on_prompt: bool = False
    # Generate from this many fixed validation prompts at each evaluation.
    sample_generations: int = 3
    # NEFTune: uniform noise of this scale on the input embeddings while training
    # (alpha / sqrt(seq_len * dim) per element); null turns it off. 5 is the paper's pick.
    neftune_noise_alpha: Optional[float] = None

    @staticmethod
    def check(task: DictConfig) -> None:
        alpha = task.neftune_noise_alpha
        if alpha is not None and alpha <= 0:
            raise ConfigError(f"task.neftune_noise_alpha={alpha}: NEFTune takes a positive value; "
                              "set it to null to turn it off.")
        if task.sample_generations < 0:
            raise ConfigError(f"task.sample_generations={task.sample_generations} must be 0 or more.")


# The DPO family's `task.loss_type` values (ftexp.tasks.preference_losses.dpo_loss).
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
# Loss types whose label smoothing means something (the assumed share of flipped labels).
SMOOTHED_LOSS_TYPES = ("sigmoid", "robust")


# Preference hyper-parameters, checked once for the config (`key` = task.beta, …) and for
# callers of the loss functions in ftexp.tasks.preference_losses.
def check_beta(beta: float, key: str = "beta") -> None:
    if not beta > 0:
        raise ConfigError(f"'{key}={beta}' must be > 0 (the strength of the preference term).")


def check_label_smoothing(value: float, loss_type: str | None = None, key: str = "label_smoothing") -> None:
    if value and loss_type is not None and loss_type not in SMOOTHED_LOSS_TYPES:
        raise ConfigError(f"'{key}={value}' has no effect with loss_type={loss_type}; set it to 0 or "
                          f"use loss_type={' or '.join(SMOOTHED_LOSS_TYPES)}.")
    if not 0.0 <= value < 0.5:
        raise ConfigError(f"'{key}={value}' must lie in [0, 0.5) (the assumed probability that a "
                          "preference label is flipped).")


@dataclass
class RewardTaskConfig(TaskConfig):
    """reward: a scalar score per (prompt, response) from a pooled linear head, trained with the
    Bradley–Terry loss on preference pairs (data.preference.margin_column adds a margin)."""
    monitor: str = "val/accuracy"
    # As for classification: auto (last non-padding token for decoders, mean for encoders) | …
    pooling: str = "auto"
    head_dropout: float = 0.0

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **TaskConfig.CHOICES, "pooling": HeadTaskConfig.CHOICES["pooling"]}

    @staticmethod
    def check(task: DictConfig) -> None:
        if not 0.0 <= task.head_dropout < 1.0:
            raise ConfigError(f"task.head_dropout={task.head_dropout} must be in [0, 1).")


@dataclass
class PreferenceTaskConfig(TaskConfig):
    """dpo / simpo / orpo / kto: a causal LM trained to prefer one response over another."""
    monitor: str = "val/rewards/accuracy"
    # Strength of the preference term (DPO's beta, IPO's tau, SimPO's beta, ORPO's lambda).
    beta: float = 0.1
    # Generate from this many fixed validation prompts at each evaluation.
    sample_generations: int = 2
    # Dropout off in the policy (as TRL does): with it on, the policy's and the reference's
    # log-probs would differ by random masks, and by more for longer responses.
    disable_dropout: bool = True

    @staticmethod
    def check(task: DictConfig) -> None:
        check_beta(task.beta, "task.beta")
        if task.sample_generations < 0:
            raise ConfigError(f"task.sample_generations={task.sample_generations} must be 0 or more.")
        if "label_smoothing" in task:
            check_label_smoothing(task.label_smoothing, task.get("loss_type"), "task.label_smoothing")


@dataclass
class ReferenceTaskConfig(PreferenceTaskConfig):
    """Preference tasks that compare the policy with a frozen reference policy (dpo, kto)."""
    # Where the reference log-probs come from: auto (adapter with a PEFT adapter, else copy) |
    # adapter (the same network with its adapter disabled: one copy of the weights) | copy (a
    # frozen copy of the starting weights) | precompute (computed once before training and kept
    # in the content-addressed cache, so later runs on the same data and base do no reference pass).
    reference: str = "auto"

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **TaskConfig.CHOICES, "reference": ("auto", "adapter", "copy", "precompute")}


@dataclass
class DPOTaskConfig(ReferenceTaskConfig):
    """dpo: the DPO loss family on the policy's log-ratios to the reference."""
    # sigmoid (DPO; with label_smoothing: cDPO) | robust (label-noise-robust DPO) | ipo | hinge (SLiC)
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0  # sigmoid / robust: assumed share of flipped labels
    reference_free: bool = False  # compare the policy's log-probs directly (reference = 0)

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **ReferenceTaskConfig.CHOICES, "loss_type": DPO_LOSS_TYPES}


@dataclass
class SimPOTaskConfig(PreferenceTaskConfig):
    """simpo: reference-free, on length-averaged log-probs, with a target reward margin."""
    beta: float = 2.0  # the SimPO paper's pick
    gamma: float = 1.0  # target margin in reward units (the paper's gamma / beta = 0.5)
    label_smoothing: float = 0.0


@dataclass
class ORPOTaskConfig(PreferenceTaskConfig):
    """orpo: NLL on the chosen response + beta * the odds-ratio term; no reference."""


@dataclass
class KTOTaskConfig(ReferenceTaskConfig):
    """kto: unpaired desirable / undesirable examples; the reference point is a KL estimate on
    mismatched (prompt, completion) pairs."""
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    @staticmethod
    def check(task: DictConfig) -> None:
        PreferenceTaskConfig.check(task)
        for key in ("desirable_weight", "undesirable_weight"):
            if not task[key] > 0:
                raise ConfigError(f"task.{key}={task[key]} must be > 0.")


# GRPO's `task.loss_type` and `task.scale_rewards` values (ftexp.tasks.grpo_losses).
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def reference_source(task: Mapping[str, Any], adapter_method: str) -> str | None:
    """Where a policy objective's reference log-probs come from — adapter (the network with its
    PEFT adapter disabled) | copy (a frozen copy of the starting weights) | precompute — or None
    when it has none: no `task.reference` key, `reference_free`, or a KL weight `beta` of 0
    (GRPO). `auto` is adapter with a PEFT adapter, else copy. Shared by the preference tasks, GRPO
    and the config rules, so they agree on when a reference pass happens."""
    if "reference" not in task or task.get("reference_free") or task.get("beta", 1) == 0:
        return None
    if task["reference"] != "auto":
        return str(task["reference"])
    return "copy" if adapter_method in NON_PEFT_ADAPTERS else "adapter"


@dataclass
class GRPOTaskConfig(TaskConfig):
    """grpo: online RL — the policy samples `num_generations` completions per prompt, reward
    functions score them, and the clipped policy-ratio objective (tasks/grpo_losses.py) pushes it
    toward the better ones of each group."""
    monitor: str = "val/reward"  # mean reward of greedy completions on the validation prompts
    num_generations: int = 4  # G: completions sampled per prompt (a group)
    # Optimizer steps per batch of samples (PPO epochs, TRL's num_iterations): 1 is on-policy;
    # more reuse each batch's samples, and the clipping (epsilon) bounds how far the policy moves.
    num_iterations: int = 1
    epsilon: float = 0.2  # the ratio is clipped to [1 - epsilon, 1 + epsilon_high]
    epsilon_high: Optional[float] = None  # null: epsilon (DAPO's clip-higher: e.g. 0.28)
    # Weight of the k3 KL to the reference policy; 0: no reference and no reference pass at all.
    beta: float = 0.0
    # With beta > 0: auto (the adapter-disabled network with a PEFT adapter, else copy) | adapter |
    # copy (a frozen copy of the starting weights).
    reference: str = "auto"
    loss_type: str = "grpo"  # grpo (per-sequence mean) | dr_grpo (/ G L) | dapo (token mean)
    scale_rewards: str = "group"  # advantages / group std | / batch std | none (Dr. GRPO)
    # Tokens sampled per completion (null: generation.max_new_tokens); dr_grpo divides by it.
    max_completion_length: Optional[int] = None
    # name → {_target_, weight, its own keys}: ftexp.rewards.build_reward builds each; a completion's
    # reward is the weighted sum. The default (`correct`: exact match of the last number against
    # the `answer` column) is in conf/task/grpo.yaml, not here: a schema's dict default would come
    # back in every merge, so ~task.rewards.correct could not drop it.
    rewards: dict[str, Any] = field(default_factory=dict)
    # Generate from this many fixed validation prompts at each evaluation.
    sample_generations: int = 2
    # Who samples the completions: transformers' generate (everywhere) | vllm (one CUDA GPU, the
    # `vllm` extra; a colocated engine that gets the policy's weights after each optimizer step).
    generation_backend: str = "transformers"
    vllm_gpu_memory_utilization: float = 0.3  # the share of GPU memory vLLM may take (its KV cache)
    # Dropout off in the policy (as for the preference tasks): the ratio and KL compare log-probs
    # of the same network, which random dropout masks would make differ.
    disable_dropout: bool = True

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **TaskConfig.CHOICES, "loss_type": GRPO_LOSS_TYPES, "scale_rewards": SCALE_REWARDS,
        "reference": ("auto", "adapter", "copy"), "generation_backend": ("transformers", "vllm")}

    @staticmethod
    def check(task: DictConfig) -> None:
        if task.num_generations < 2:
            raise ConfigError(f"task.num_generations={task.num_generations} must be at least 2: "
                              "advantages compare the completions of one prompt with each other.")
        if task.num_iterations < 1:
            raise ConfigError(f"task.num_iterations={task.num_iterations} must be at least 1 "
                              "(optimizer steps per batch of samples).")
        if not 0.0 < task.epsilon < 1.0:
            raise ConfigError(f"task.epsilon={task.epsilon} must lie in (0, 1): the policy ratio is "
                              "clipped to [1 - epsilon, 1 + epsilon_high].")
        if task.epsilon_high is not None and not task.epsilon_high > 0:
            raise ConfigError(f"task.epsilon_high={task.epsilon_high} must be > 0 (or null: epsilon).")
        if not task.beta >= 0:
            raise ConfigError(f"task.beta={task.beta} must be >= 0 (the KL weight; 0: no reference).")
        if task.max_completion_length is not None and task.max_completion_length < 1:
            raise ConfigError(f"task.max_completion_length={task.max_completion_length} must be at least "
                              "1 (or null: generation.max_new_tokens).")
        if task.sample_generations < 0:
            raise ConfigError(f"task.sample_generations={task.sample_generations} must be 0 or more.")
        if not 0.0 < task.vllm_gpu_memory_utilization < 1.0:
            raise ConfigError(f"task.vllm_gpu_memory_utilization={task.vllm_gpu_memory_utilization} must "
                              "lie in (0, 1): the share of GPU memory the vLLM engine may take.")
        if not task.rewards:
            raise ConfigError("task.rewards is empty: give at least one reward function, e.g. "
                              "+task.rewards.correct._target_=ftexp.rewards.exact_match.")
        for name, node in task.rewards.items():
            if not isinstance(node, DictConfig) or "_target_" not in node:
                raise ConfigError(f"task.rewards.{name} needs a _target_: "
                                  f"+task.rewards.{name}._target_=my.module.my_reward.")
            weight = node.get("weight", 1.0)
            if not _is_number(weight) or weight != weight or abs(weight) == float("inf"):
                raise ConfigError(f"task.rewards.{name}.weight={weight} must be a finite number.")


@dataclass
class GenerationConfig(GroupSchema):
    """Decoding settings for sample generations during training and for `ftexp.generate`."""
    max_new_tokens: int = 128
    do_sample: bool = False  # false: greedy decoding
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0

    @staticmethod
    def check(generation: DictConfig) -> None:
        if generation.max_new_tokens < 1:
            raise ConfigError(f"generation.max_new_tokens={generation.max_new_tokens} must be at least 1.")


# Packages whose optimizers read optimizer.projection from their parameter groups (GaLore,
# APOLLO), with the projection keys each one needs beyond the common ones.
LOW_RANK_OPTIMIZER_PACKAGES: dict[str, tuple[str, ...]] = {
    "galore_torch": (), "apollo_torch": ("proj", "scale_type")}


@dataclass
class GradientProjection:
    """optimizer.projection (GaLore / APOLLO): each chosen 2-D weight's gradient is projected to
    `rank` directions, and the optimizer keeps its moments there: ~2·rank·max(m, n) numbers per
    m×n weight instead of AdamW's 2·m·n. Weights whose smaller side is ≤ rank, 1-D parameters and
    embeddings train as in plain AdamW."""
    rank: int = 128
    update_proj_gap: int = 200  # optimizer steps between recomputing the projection
    scale: float = 0.25  # multiplies the projected-back update (GaLore's alpha)
    proj_type: str = "std"  # std (project the smaller side) | reverse_std | left | right
    # Substrings of module names whose Linear weights are projected, e.g. [attn, mlp]; null:
    # every Linear inside the transformer blocks (attention and MLP).
    target_modules: Optional[list[str]] = None
    proj: Optional[str] = None  # APOLLO only: random | svd (how the projection is drawn)
    scale_type: Optional[str] = None  # APOLLO only: channel | tensor (the gradient-scaling factor)

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "proj_type": ("std", "reverse_std", "left", "right"), "proj": ("random", "svd"),
        "scale_type": ("channel", "tensor")}


@dataclass
class BlockCoordinate:
    """optimizer.blocks (BAdam): the `_target_` optimizer updates one block of the network (a
    transformer layer) at a time, switching every `switch_block_every` steps; only the active
    block has gradients and optimizer state. Full fine-tuning on one device."""
    switch_mode: str = "descending"  # random | ascending | descending | fixed (BAdam's orders)
    switch_block_every: int = 50
    start_block: Optional[int] = None  # null: the first block of the order
    include_embedding: bool = False  # the input embeddings as a block of their own
    # The parameters after the last layer (final norm, lm_head) as a block of their own; off: they
    # stay fixed. A task's new head (classification, regression) always trains.
    include_lm_head: bool = False
    # Blocks by parameter-name substrings, e.g. [[layers.0., layers.1.], [layers.2.]]; null: one
    # block per transformer layer.
    block_prefixes: Optional[list[list[str]]] = None

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "switch_mode": ("random", "ascending", "descending", "fixed")}


def _check_nested(node: Any, schema: type, where: str) -> None:
    """Keys and allowed values of a nested optimizer node (the optimizer group takes its target's
    arguments, so its struct flag is off and a `+` override could add any key below it)."""
    known = [f.name for f in fields(schema)]
    for key in node.keys():
        if key not in known:
            hint = did_you_mean(str(key), known, f"{where}.")
            raise ConfigError(f"unknown config key '{where}.{key}'.{hint} "
                              f"Valid keys under '{where}': {', '.join(known)}.")
    for key, allowed in schema.CHOICES.items():
        value = node.get(key)
        if value is not None and str(value) not in allowed:
            raise ConfigError(f"'{where}.{key}={value}' is not a valid choice."
                              f"{did_you_mean(str(value), allowed)} Choices: {', '.join(allowed)}.")


@dataclass
class OptimizerConfig(GroupSchema):
    """A `_target_` optimizer class, built over the trainable parameters by builders/optim.py
    (`params` and `lr` are passed there; weight decay per parameter group). Other keys are the
    class's own arguments: +optimizer.momentum=0.9."""
    TAKES_TARGET_ARGUMENTS: ClassVar[bool] = True
    _target_: str = "torch.optim.AdamW"
    # A number, `auto` (the adapter method's usual rate, see ADAPTERS below) or
    # `find` (an LR range test before training; its plot goes to the run dir).
    learning_rate: Any = 2e-4
    weight_decay: float = 0.01  # never applied to biases and norm weights
    betas: Optional[list[float]] = field(default_factory=lambda: [0.9, 0.999])  # null: not passed
    eps: Optional[float] = 1e-8  # null: not passed
    # auto | true | false — the fused kernel, for optimizers that offer one (torch AdamW);
    # auto: on CUDA and CPU, unless fp16 mixed precision with gradient clipping (its scaler must
    # unscale before clipping).
    fused: Any = "auto"
    # GaLore / APOLLO (optimizer=galore, apollo): the low-rank gradient projection their
    # optimizers read; null for every other optimizer.
    projection: Optional[GradientProjection] = None
    # BAdam (optimizer=badam): block-coordinate updates wrapping the `_target_` optimizer; null: off.
    blocks: Optional[BlockCoordinate] = None

    @staticmethod
    def check(opt: DictConfig) -> None:
        lr = opt.learning_rate
        if not (lr in ("auto", "find") or _is_number(lr) and lr > 0):
            raise ConfigError(f"optimizer.learning_rate={lr} must be a positive number, auto (the "
                              "adapter method's default) or find (an LR range test).")
        if opt.fused not in ("auto", True, False):
            raise ConfigError(f"optimizer.fused={opt.fused} must be auto, true or false.")
        if opt.betas is not None and (len(opt.betas) != 2 or not all(0.0 <= b < 1.0 for b in opt.betas)):
            raise ConfigError(f"optimizer.betas={list(opt.betas)} must be two numbers in [0, 1), "
                              "e.g. [0.9,0.999].")
        if opt.weight_decay < 0:
            raise ConfigError(f"optimizer.weight_decay={opt.weight_decay} must be 0 or more.")
        OptimizerConfig._check_projection(opt)
        if opt.blocks is not None:
            _check_nested(opt.blocks, BlockCoordinate, "optimizer.blocks")
            if opt.blocks.switch_block_every < 1:
                raise ConfigError(f"optimizer.blocks.switch_block_every={opt.blocks.switch_block_every} "
                                  "must be at least 1 (optimizer steps per block).")
            if opt.projection is not None:
                raise ConfigError("optimizer.blocks (BAdam) and optimizer.projection (GaLore / APOLLO) "
                                  "cannot be combined; choose optimizer=badam, galore or apollo.")

    @staticmethod
    def _check_projection(opt: DictConfig) -> None:
        """optimizer.projection and a `_target_` that reads it go together."""
        package = str(opt._target_).split(".")[0]
        extra = LOW_RANK_OPTIMIZER_PACKAGES.get(package)
        p = opt.projection
        if p is None:
            if extra is not None:
                raise ConfigError(f"optimizer._target_={opt._target_} needs optimizer.projection (its "
                                  "low-rank settings); choose optimizer=galore or apollo, which set it.")
            return
        if extra is None:
            raise ConfigError(f"optimizer.projection is read by GaLore / APOLLO optimizers only, not "
                              f"{opt._target_}, which would ignore it; choose optimizer=galore or "
                              "apollo, or set optimizer.projection=null.")
        _check_nested(p, GradientProjection, "optimizer.projection")
        for key in ("rank", "update_proj_gap"):
            if p[key] < 1:
                raise ConfigError(f"optimizer.projection.{key}={p[key]} must be at least 1.")
        if not p.scale > 0:
            raise ConfigError(f"optimizer.projection.scale={p.scale} must be positive.")
        for key in ("proj", "scale_type"):
            if key in extra and p[key] is None:
                raise ConfigError(f"optimizer.projection.{key} must be set for {opt._target_}, "
                                  f"e.g. optimizer=apollo.")
            if key not in extra and p[key] is not None:
                raise ConfigError(f"optimizer.projection.{key} is an APOLLO setting, not read by "
                                  f"{opt._target_}; remove it.")


@dataclass
class SchedulerConfig(GroupSchema):
    """A `_target_` function of transformers' schedules (or any with its signature), called by
    builders/schedulers.py with the optimizer and, where it takes them, num_warmup_steps and
    num_training_steps (optimizer steps). Other keys are the function's own arguments:
    +scheduler.num_cycles=2."""
    TAKES_TARGET_ARGUMENTS: ClassVar[bool] = True
    _target_: str = "transformers.get_linear_schedule_with_warmup"
    warmup_fraction: float = 0.1  # share of the total optimizer steps spent warming up
    warmup_steps: Optional[int] = None  # a step count instead (wins over warmup_fraction)
    # Multiply the learning rate by the number of training processes (linear) or its root (sqrt).
    learning_rate_scaling: str = "none"

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"learning_rate_scaling": ("none", "linear", "sqrt")}

    @staticmethod
    def check(sched: DictConfig) -> None:
        if not 0.0 <= sched.warmup_fraction < 1.0:
            raise ConfigError(f"scheduler.warmup_fraction={sched.warmup_fraction} must be in [0, 1).")
        if sched.warmup_steps is not None and sched.warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps={sched.warmup_steps} must be 0 or more (or null).")


# -- preference data (data.preference) -------------------------------------------------------
# Record shapes ftexp.data.preference reads; its docstring shows each one.
PAIRED_FORMATS = ("standard", "conversational", "implicit_prompt", "sharegpt")
UNPAIRED_FORMATS = ("unpaired_standard", "unpaired_conversational", "unpaired_messages")
FORMATS = ("auto", *PAIRED_FORMATS, *UNPAIRED_FORMATS)
# The roles the normalised messages use (what chat templates expect).
ROLES = ("system", "user", "assistant", "tool")
# Role names as they appear in the wild → the normalised ones; `roles` in the settings adds to it.
DEFAULT_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user",
                 "gpt": "assistant"}


@dataclass
class PreferenceColumns(GroupSchema):
    """data.preference: where a table keeps each part of a preference record (reward models, the
    DPO family, KTO; ftexp.data.preference reads them). A dict (or Hydra node) with these keys
    works wherever an instance does."""
    # auto | standard | conversational | implicit_prompt | sharegpt | unpaired_standard |
    # unpaired_conversational | unpaired_messages
    format: str = "auto"
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    completion_column: str = "completion"
    # KTO: true / false, 1 / 0 or "true" / "false" — is the completion desirable?
    label_column: str = "label"
    # A whole conversation (sharegpt, unpaired_messages); None: the first of `conversations`,
    # `messages` that the table has.
    messages_column: Optional[str] = None
    # A number per pair: how much better chosen is (None: no margin).
    margin_column: Optional[str] = None
    # The keys of a message; None: role/content, else from/value (ShareGPT), per message.
    role_key: Optional[str] = None
    content_key: Optional[str] = None
    # More role names → system | user | assistant | tool, added to DEFAULT_ROLES (e.g. {bot: assistant}).
    roles: dict[str, str] = field(default_factory=dict)
    # KTO on paired data: each pair becomes two examples, chosen desirable and rejected not.
    unpair: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"preference format '{self.format}' is unknown; use one of "
                              f"{', '.join(FORMATS)}.{did_you_mean(self.format, FORMATS)}")
        if (self.role_key is None) != (self.content_key is None):
            raise ConfigError("set role_key and content_key together (the two keys of a message), "
                              "or neither to detect role/content and from/value.")
        bad = {k: v for k, v in dict(self.roles).items() if v not in ROLES}
        if bad:
            name, value = next(iter(bad.items()))
            raise ConfigError(f"roles.{name}={value!r} is not a role chat templates know; map it to "
                              f"one of {', '.join(ROLES)}.")
        self.roles = {**DEFAULT_ROLES, **{str(k): str(v) for k, v in dict(self.roles).items()}}

    @classmethod
    def of(cls, settings: PreferenceColumns | Mapping[str, Any] | None) -> PreferenceColumns:
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        known = [f.name for f in fields(cls)]
        for key in settings:
            if key not in known:
                raise ConfigError(f"preference setting '{key}' is unknown; the settings are "
                                  f"{', '.join(known)}.{did_you_mean(str(key), known)}")
        return cls(**{k: (dict(v) if k == "roles" else v) for k, v in settings.items()})


@dataclass
class DataConfig(GroupSchema):
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
    # Training batches of similar length (transformers' group_by_length): random megabatches of
    # up to 50 batches, each sorted by length, so less padding; the order stays the seed's.
    group_by_length: bool = False
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
    # Samples longer than max_length: cut (keep the first max_length tokens; preference pairs keep
    # their responses and lose the prompt's start first) | drop.
    truncation: str = "cut"
    # -- preference tasks (reward, dpo, simpo, orpo, kto) ---------------------------------------
    # Prompts longer than this keep their last tokens (null: only max_length limits them).
    max_prompt_length: Optional[int] = None
    preference: PreferenceColumns = field(default_factory=PreferenceColumns)
    # Several samples per row, each attending only to itself (position ids restart per sample).
    packing: bool = False
    # -- caches (under paths.cache_dir, keyed by a content hash of all they depend on) ------------
    # Reuse tokenized splits across runs with the same data file contents, tokenizer and settings.
    cache_tokenized: bool = True
    # adapter=frozen only: run the frozen encoder once, store the pooled embeddings, and train the
    # head on them; later runs with the same key do no encoder passes at all.
    cache_encoder_embeddings: bool = False

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "format": ("auto", "csv", "tsv", "json", "jsonl", "parquet"),
        "empty_fields": ("keep", "drop_paragraph", "error"), "truncation": ("cut", "drop")}

    @staticmethod
    def check(data: DictConfig) -> None:
        if not data.text_columns:
            raise ConfigError("data.text_columns is empty: name at least one text column, "
                              "e.g. data.text_columns=[sentence].")
        if data.split_column is None:
            probs = list(data.split_probabilities)
            if len(probs) != 3 or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
                raise ConfigError(
                    f"data.split_probabilities={probs} must be three non-negative numbers "
                    "(train, validation, test) that sum to 1, e.g. [0.9,0.05,0.05]."
                )
            if probs[0] == 0:
                raise ConfigError("data.split_probabilities gives the train split no rows; "
                                  "make its first number positive.")
        for key in ("max_length", "max_batch_size", "eval_batch_size"):
            if data[key] < 1:
                raise ConfigError(f"data.{key}={data[key]} must be at least 1.")
        size = data.batch_size
        if not (size == "auto" or _is_number(size, integer=True) and size >= 1):
            raise ConfigError(f"data.batch_size={data.batch_size} must be a whole number of at least 1, "
                              "or auto.")
        if data.max_train_samples is not None and data.max_train_samples < 1:
            raise ConfigError(f"data.max_train_samples={data.max_train_samples} must be at least 1 "
                              "(or null for all rows).")
        if data.max_prompt_length is not None and not 1 <= data.max_prompt_length < data.max_length:
            raise ConfigError(f"data.max_prompt_length={data.max_prompt_length} must be at least 1 and "
                              f"below data.max_length={data.max_length} (room for the response).")
        if data.group_by_length and data.cache_encoder_embeddings:
            raise ConfigError("data.group_by_length=true has nothing to group with "
                              "data.cache_encoder_embeddings=true (stored vectors have no length); "
                              "set one of them to false.")
        if data.label_separator == "":
            raise ConfigError("data.label_separator is empty: use null, or a character such as '|'.")
        from omegaconf import OmegaConf

        PreferenceColumns.of(OmegaConf.to_container(data.preference))  # its own one-line errors


@dataclass
class TrainerConfig(GroupSchema):
    accelerator: str = "auto"
    devices: Any = "auto"  # per node; under torchrun / SLURM taken from the launcher
    num_nodes: int = 1
    # 32 | bf16-mixed | 16-mixed | bf16-true | auto (bf16-mixed where the hardware has bf16 units)
    precision: str = "auto"
    max_epochs: int = 1
    max_steps: int = -1
    val_check_interval: Any = 1.0
    log_every_n_steps: int = 10
    gradient_clip_val: Optional[float] = 1.0  # clip the gradient norm (null: no clipping)
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

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "precision": ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")}

    @staticmethod
    def check(trainer: DictConfig) -> None:
        if trainer.max_epochs < 1 and trainer.max_steps < 1:
            raise ConfigError("trainer.max_epochs and trainer.max_steps are both below 1: "
                              "set at least one of them.")


@dataclass
class CallbacksConfig(GroupSchema):
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
    # Callbacks of your own, each a `_target_` node built with hydra.utils.instantiate:
    # +callbacks.extra.<name>._target_=my.module.MyCallback (+callbacks.extra.<name>.<arg>=…).
    # The built-in ones above stay switches: they are wired to each other and to the task
    # (monitor, the resume saver the NaN guard falls back on), which a YAML node cannot express.
    extra: dict[str, Any] = field(default_factory=dict)

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"on_nonfinite": ("stop", "skip")}

    @staticmethod
    def check(callbacks: DictConfig) -> None:
        patience = callbacks.early_stopping_patience
        if patience is not None and patience < 1:
            raise ConfigError(f"callbacks.early_stopping_patience={patience} must be at least 1 (or null).")
        for name, node in callbacks.extra.items():
            if not isinstance(node, DictConfig) or "_target_" not in node:
                raise ConfigError(f"callbacks.extra.{name} needs a _target_: "
                                  f"+callbacks.extra.{name}._target_=my.module.MyCallback.")


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
    # Open here: typed by the schema the task's registry entry names (see ftexp.validation).
    task: Any = field(default_factory=lambda: {"name": "classification"})
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    # Named `_target_` nodes, one per logger (conf/logger/*.yaml), built by builders/loggers.py.
    logger: dict[str, Any] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    # A run directory to continue from its last checkpoint (`last`: the newest run in outputs/runs).
    resume: Optional[str] = None
    seed: int = 42
    # Run the same configuration under several seeds, one after another, each in its own run dir
    # (<run dir>/seed_<n>): a count (3: seed, seed+1, seed+2) or a list of distinct seeds ([1,2,3]).
    # Typed Any because OmegaConf has no int-or-list type; ftexp.seeds checks it.
    seeds: Any = None
    # What runs that differ only by seed share, for reports and loggers (W&B group, MLflow tag).
    # Null: derived when the run starts from its config without seed and where it is stored
    # (ftexp.seeds.run_group), e.g. classification-tiny_bert-lora-1a2b3c4d.
    group: Optional[str] = None
    # Print full tracebacks instead of one-line errors.
    debug: bool = False



@dataclass(frozen=True)
class AdapterMethod:
    """What ftexp knows about one `adapter.method` (the adapter group's other keys are PEFT's)."""
    # learning_rate=auto: the usual peak rate for the method (sources beside the table below).
    auto_learning_rate: float
    # The PEFT config class; None: a method of ftexp's own (or `peft`, by adapter._target_).
    peft_config: str | None = None
    # PEFT settings the method implies.
    implied: dict[str, Any] = field(default_factory=dict)
    # Prepends virtual tokens: packed rows cannot share them and they cannot merge into weights.
    prompt_learning: bool = False
    # Which weights train: all of them (checkpoints hold the whole model), some of the base
    # model's own (so they cannot be k-bit quantized), or none of the backbone (only a head).
    trains_all_weights: bool = False
    trains_base_weights: bool = False
    trains_backbone: bool = True
    # AdaLoRA: re-budgets ranks after each step from the run's step count, with an orthogonality
    # penalty in the loss.
    budgets_ranks: bool = False


# Default peak learning rates by fine-tuning method, from common practice:
#   full fine-tuning 2e-5: BERT paper's {2,3,5}e-5 sweep and the HF Trainer/run_glue examples;
#   head only 1e-3: usual Adam rate for training a fresh linear probe on frozen features;
#   LoRA family 2e-4: LoRA/QLoRA papers and the PEFT examples (1e-4 to 3e-4);
#   IA3 3e-3: the (IA)^3 / T-Few paper;
#   prompt learning 1e-2: prefix-tuning / prompt-tuning papers and the PEFT examples (1e-2 to 3e-2).
_FULL, _HEAD, _LORA, _IA3, _PROMPT = 2e-5, 1e-3, 2e-4, 3e-3, 1e-2
# Prompt-learning methods need a task type; feature extraction is the headless one.
_HEADLESS = {"task_type": "FEATURE_EXTRACTION"}

# Every adapter.method, once (conf/adapter/<method>.yaml holds each one's PEFT keys).
ADAPTERS: dict[str, AdapterMethod] = {
    "none": AdapterMethod(_FULL, trains_all_weights=True, trains_base_weights=True),  # full fine-tuning
    "frozen": AdapterMethod(_HEAD, trains_backbone=False),  # backbone frozen, head trained
    "freeze": AdapterMethod(_FULL, trains_base_weights=True),  # the last N layers / name patterns
    "lora": AdapterMethod(_LORA, "LoraConfig"),
    "dora": AdapterMethod(_LORA, "LoraConfig", {"use_dora": True}),
    "adalora": AdapterMethod(_LORA, "AdaLoraConfig", budgets_ranks=True),
    "ia3": AdapterMethod(_IA3, "IA3Config"),
    "loha": AdapterMethod(_LORA, "LoHaConfig"),
    "lokr": AdapterMethod(_LORA, "LoKrConfig"),
    "oft": AdapterMethod(_LORA, "OFTConfig"),
    "boft": AdapterMethod(_LORA, "BOFTConfig"),
    "prefix_tuning": AdapterMethod(_PROMPT, "PrefixTuningConfig", _HEADLESS, prompt_learning=True),
    "prompt_tuning": AdapterMethod(_PROMPT, "PromptTuningConfig", _HEADLESS, prompt_learning=True),
    "llama_adapter": AdapterMethod(_PROMPT, "AdaptionPromptConfig", _HEADLESS, prompt_learning=True),
    "peft": AdapterMethod(_LORA),  # any PEFT config class by adapter._target_
}
ADAPTER_METHODS = tuple(ADAPTERS)
# Methods of ftexp's own; every other one goes through PEFT.
NON_PEFT_ADAPTERS = tuple(m for m, a in ADAPTERS.items() if a.peft_config is None and m != "peft")
PROMPT_LEARNING_ADAPTERS = tuple(m for m, a in ADAPTERS.items() if a.prompt_learning)


def check_adapter(adapter: DictConfig) -> None:
    """The adapter group is open (each PEFT method has PEFT's keys, checked by builders/adapter.py
    when the job starts); here only what ftexp itself reads."""
    if "method" not in adapter:
        raise ConfigError("adapter.method is missing: choose an adapter, e.g. adapter=lora.")
    if adapter.method not in ADAPTER_METHODS:
        raise ConfigError(f"'adapter.method={adapter.method}' is not a valid choice."
                          f"{did_you_mean(str(adapter.method), ADAPTER_METHODS)} "
                          f"Choices: {', '.join(ADAPTER_METHODS)}.")
    if adapter.method == "freeze" and not (adapter.get("last_n_layers") or adapter.get("trainable_patterns")):
        raise ConfigError("adapter=freeze trains nothing: set adapter.last_n_layers=N or "
                          "adapter.trainable_patterns=[regex,...].")


# The typed groups of FtexpConfig, checked group by group by ftexp.validation.
GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig, "quant": QuantConfig, "strategy": StrategyConfig,
    "optimizer": OptimizerConfig, "scheduler": SchedulerConfig, "generation": GenerationConfig,
    "data": DataConfig, "trainer": TrainerConfig, "callbacks": CallbacksConfig}

ConfigStore.instance().store(name="ftexp_schema", node=FtexpConfig)

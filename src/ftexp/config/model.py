"""The `model` group: what to load (weights, tokenizer, random-init architecture), how
(dtype, attention, RoPE scaling, added tokens) and the loss path of causal LMs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig

from ftexp.config.base import DTYPES, MISSING, GroupSchema, is_number
from ftexp.runs.errors import ConfigError, did_you_mean

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
    if not (is_number(factor) and factor > 1):
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
    # LongLoRA's shifted sparse attention (S²-Attn) in training: 1 / s2_group_size_ratio groups per
    # sequence, attention within each, half the heads shifted by half a group; evaluation and
    # generation use full attention (builders/s2_attention.py). Llama-family decoders.
    shift_short_attention: bool = False
    s2_group_size_ratio: float = 0.25
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
    # The unquantized model an adapter trained on a base saved quantized (GPTQ, AWQ, …) merges into
    # at export (ftexp.export --base overrides it); null: such a run exports its adapter alone.
    export_base: Optional[str] = None
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
        ratio = model.get("s2_group_size_ratio")
        if not (is_number(ratio) and 0 < ratio <= 1):
            raise ConfigError(f"model.s2_group_size_ratio={ratio} must be in (0, 1]: the share of a sequence "
                              "one S²-Attn group holds (LongLoRA: 0.25).")
        attention = model.get("attn_implementation")
        if model.get("shift_short_attention") and attention not in (None, "auto", "sdpa"):
            raise ConfigError(f"model.shift_short_attention=true is its own attention implementation (full "
                              f"attention through sdpa outside training), so model.attn_implementation="
                              f"{attention} cannot apply; set model.attn_implementation=auto.")
        tokens = list(model.get("add_special_tokens") or [])
        if any(not isinstance(t, str) or not t.strip() for t in tokens) or len(set(tokens)) != len(tokens):
            raise ConfigError(f"model.add_special_tokens={tokens} must be distinct, non-empty strings, "
                              "e.g. ['<|tool|>','<|/tool|>'].")

"""The `adapter` group: every `adapter.method` once (its PEFT config class, implied settings,
default learning rate, what it trains) and the keys ftexp itself reads. The group is open:
each PEFT method's keys are PEFT's, checked by builders/adapter.py when the job starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from ftexp.runs.errors import ConfigError, did_you_mean


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
#   prompt learning 1e-2: prefix-tuning / prompt-tuning papers and the PEFT examples (1e-2 to 3e-2);
#   LLaMA Pro 1e-4: LLaMA-Factory's llama_pro example (the new blocks start at the identity and
#   train alone, nearer an adapter than a full fine-tune).
_FULL, _HEAD, _LORA, _IA3, _PROMPT, _LLAMA_PRO = 2e-5, 1e-3, 2e-4, 3e-3, 1e-2, 1e-4
# Prompt-learning methods need a task type; feature extraction is the headless one.
_HEADLESS = {"task_type": "FEATURE_EXTRACTION"}

# Every adapter.method, once (conf/adapter/<method>.yaml holds each one's PEFT keys).
ADAPTERS: dict[str, AdapterMethod] = {
    "none": AdapterMethod(_FULL, trains_all_weights=True, trains_base_weights=True),  # full fine-tuning
    "frozen": AdapterMethod(_HEAD, trains_backbone=False),  # backbone frozen, head trained
    "freeze": AdapterMethod(_FULL, trains_base_weights=True),  # the last N layers / name patterns
    # LLaMA Pro: identity copies of blocks inserted, only they train (builders/llama_pro.py).
    "llama_pro": AdapterMethod(_LLAMA_PRO, trains_base_weights=True),
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
# Methods with LoRA's A and B matrices, whose learning rates LoRA+ (optimizer.loraplus_lr_ratio) splits.
LORAPLUS_ADAPTERS = ("lora", "dora")


def check_adapter(adapter: DictConfig) -> None:
    """The adapter group is open (each PEFT method has PEFT's keys, checked by builders/adapter.py
    when the job starts); here only what ftexp itself reads."""
    if "method" not in adapter:
        raise ConfigError("adapter.method is missing: choose an adapter, e.g. adapter=lora.")
    if adapter.method not in ADAPTER_METHODS:
        raise ConfigError(f"'adapter.method={adapter.method}' is not a valid choice."
                          f"{did_you_mean(str(adapter.method), ADAPTER_METHODS)} "
                          f"Choices: {', '.join(ADAPTER_METHODS)}.")
    if adapter.method == "llama_pro":
        n = adapter.get("num_expand_layers")
        if not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
            raise ConfigError(f"adapter.num_expand_layers={n} must be a positive whole number (the blocks "
                              "LLaMA Pro inserts), e.g. adapter.num_expand_layers=8.")
    if adapter.method == "freeze" and not (adapter.get("last_n_layers") or adapter.get("trainable_patterns")):
        raise ConfigError("adapter=freeze trains nothing: set adapter.last_n_layers=N or "
                          "adapter.trainable_patterns=[regex,...].")

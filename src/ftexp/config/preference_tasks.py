"""Task schemas of the preference family: the reward model (Bradley–Terry on pairs), DPO and
its loss types, SimPO, ORPO and KTO; where a policy objective's reference comes from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from omegaconf import DictConfig

from ftexp.config.adapter import NON_PEFT_ADAPTERS
from ftexp.config.task import HeadTaskConfig, TaskConfig
from ftexp.runs.errors import ConfigError

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
    # The NLL term over the chosen response's tokens only (the paper's L_SFT, the NLL of the
    # answer given the prompt) | true: over the prompt's tokens too, as TRL's ORPOTrainer does.
    # The odds ratio compares the responses alone either way.
    nll_on_prompt: bool = False


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


def reference_source(task: Mapping[str, Any], adapter_method: str) -> str | None:
    """Where a policy objective's reference log-probs come from — adapter (the network with its
    PEFT adapter disabled) | copy (a frozen copy of the starting weights) | precompute — or None
    when it has none: no `task.reference` key, `reference_free`, or a KL weight of 0 (GRPO's
    `beta`, PPO's `kl_coef`). `auto` is adapter with a PEFT adapter, else copy. Shared by the
    preference tasks, GRPO, PPO and the config rules, so they agree on when a reference pass happens."""
    if ("reference" not in task or task.get("reference_free") or task.get("beta", 1) == 0
            or task.get("kl_coef", 1) == 0):
        return None
    if task["reference"] != "auto":
        return str(task["reference"])
    return "copy" if adapter_method in NON_PEFT_ADAPTERS else "adapter"

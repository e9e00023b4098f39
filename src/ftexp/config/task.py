"""The `task` group's shared keys and the schemas of the head tasks (classification,
regression) and the language-model tasks (causal_lm, pretrain, distill). Each task's registry entry
(ftexp.tasks.registry) names its schema; the preference and RL families have modules of
their own beside this one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from omegaconf import DictConfig

from ftexp.config.base import MISSING, GroupSchema
from ftexp.runs.errors import ConfigError


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


@dataclass
class DistillTaskConfig(LanguageModelTaskConfig):
    """distill: the student learns the teacher's next-token distributions on the data's responses
    (off-policy knowledge distillation, GKD's lambda = 0), by the generalised JSD of
    tasks/distill_losses.py; `kd_ratio` < 1 mixes in the data's own cross-entropy."""
    # A finished ftexp run (its merged network), a model directory or a Hub id; it must share the
    # student's tokenizer.
    teacher: Optional[str] = None
    beta: float = 0.5  # 0: forward KL(teacher || student) | 1: reverse KL | between: generalised JSD
    temperature: float = 1.0  # both models' logits are divided by it
    # Weight of the distillation term; the cross-entropy on the responses gets 1 - kd_ratio.
    kd_ratio: float = 1.0
    # GKD's lambda: the share of training batches whose responses the student samples itself (from
    # the batch's prompts, the generation group's sampling settings) before the teacher scores them
    # (on-policy); the rest use the data's responses (off-policy). 0: off-policy only.
    on_policy_fraction: float = 0.0
    # Compute the teacher's final hidden states for every row once, before fit, and keep them in the
    # content-addressed cache (keyed by the encoded data, the teacher's weights and the precision):
    # the off-policy batches then skip the teacher's forward pass (its LM head still runs). Costs
    # rows x tokens x hidden of the teacher's dtype, in memory (in each process) and on disk
    # (tasks/teacher_cache.py).
    cache_teacher: bool = False

    @staticmethod
    def check(task: DictConfig) -> None:
        LanguageModelTaskConfig.check(task)
        if not task.teacher:
            raise ConfigError("task=distill needs a teacher: task.teacher=<finished run dir | model dir | "
                              "hub id> sharing the student's tokenizer.")
        check_divergence(task.beta, task.temperature)
        if not 0.0 <= task.kd_ratio <= 1.0:
            raise ConfigError(f"task.kd_ratio={task.kd_ratio} must lie in [0, 1] (1: distillation only, "
                              "0: cross-entropy only).")
        if not 0.0 <= task.on_policy_fraction <= 1.0:
            raise ConfigError(f"task.on_policy_fraction={task.on_policy_fraction} must lie in [0, 1] (the "
                              "share of batches the student samples; 0: the data's responses only).")
        if task.cache_teacher and task.on_policy_fraction == 1:
            raise ConfigError("task.cache_teacher=true with task.on_policy_fraction=1: every training batch "
                              "is the student's own samples, so no cached teacher state would be read; "
                              "lower task.on_policy_fraction or drop task.cache_teacher.")
        if task.on_policy_fraction > 0 and task.train_on_prompt:
            raise ConfigError("task.on_policy_fraction > 0 with task.train_on_prompt=true: the student "
                              "samples from each row's prompt, the tokens before its trained ones; set "
                              "task.train_on_prompt=false.")


def check_divergence(beta: float, temperature: float) -> None:
    """task=distill's divergence settings (also checked where tasks/distill_losses.py is called)."""
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"task.beta={beta} must lie in [0, 1]: 0 is forward KL, 1 reverse KL, "
                          "between them the generalised JSD.")
    if not temperature > 0:
        raise ConfigError(f"task.temperature={temperature} must be > 0 (it divides the logits).")

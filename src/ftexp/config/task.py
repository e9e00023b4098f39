"""The `task` group's shared keys and the schemas of the head tasks (classification,
regression) and the language-model tasks (causal_lm, pretrain). Each task's registry entry
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

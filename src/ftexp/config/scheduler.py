"""The `scheduler` group: a `_target_` learning-rate schedule and its warm-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from omegaconf import DictConfig

from ftexp.config.base import GroupSchema
from ftexp.runs.errors import ConfigError


@dataclass
class SchedulerConfig(GroupSchema):
    """A `_target_` schedule function (the shipped four in builders/schedulers.py, or any with
    transformers' schedule signature, transformers' own included), called by
    builders/schedulers.py with the optimizer and, where it takes them, num_warmup_steps and
    num_training_steps (optimizer steps). Other keys are the function's own arguments:
    +scheduler.num_cycles=2."""
    TAKES_TARGET_ARGUMENTS: ClassVar[bool] = True
    _target_: str = "ftexp.builders.schedulers.linear_with_warmup"
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

"""The `callbacks` group: switches of ftexp's own callbacks and the user's `extra` nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig

from ftexp.config.base import GroupSchema
from ftexp.runs.errors import ConfigError


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

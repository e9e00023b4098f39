"""The `trainer` group: Lightning Trainer settings ftexp passes on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig

from ftexp.config.base import GroupSchema
from ftexp.runs.errors import ConfigError


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

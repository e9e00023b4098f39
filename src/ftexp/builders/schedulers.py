"""Per-step learning-rate schedules: the `scheduler` group's `_target_` function (transformers'
schedule functions in the shipped options), called with the optimizer and, where it takes them,
num_warmup_steps and num_training_steps (in optimizer steps).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ftexp.builders.targets import check_node, instantiate_node, parameters
from ftexp.runs.errors import ConfigError

# Keys of the scheduler group that ftexp reads itself; every other key is the target's argument.
_FTEXP_KEYS = ("warmup_fraction", "warmup_steps", "learning_rate_scaling")
_WIRED = ("optimizer", "num_warmup_steps", "num_training_steps")


def warmup_steps_for(total_steps: int, warmup_fraction: float = 0.0, warmup_steps: int | None = None) -> int:
    """An explicit warmup_steps wins over warmup_fraction; never more than total_steps."""
    if warmup_steps is None:
        # Round first so float noise (0.07 * 100 = 7.000000000000001) does not ceil to one step more.
        warmup_steps = math.ceil(round(warmup_fraction * total_steps, 6))
    return min(int(warmup_steps), total_steps)


def _target_node(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in _FTEXP_KEYS}


def _option_name(settings: dict[str, Any]) -> str:
    """`scheduler=<option>` as the user chose it, for messages (the target's name outside a job)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        chosen = HydraConfig.get().runtime.choices.get("scheduler")
        if chosen:
            return f"scheduler={chosen}"
    return f"scheduler._target_={settings['_target_']}"


def check_scheduler_node(settings: dict[str, Any]) -> None:
    """Before the model loads: the target imports, takes the node's keys, and warms up if asked."""
    target = check_node(_target_node(settings), "scheduler", wired=_WIRED)
    steps, fraction = settings.get("warmup_steps"), settings.get("warmup_fraction", 0)
    warmup_key = ("scheduler.warmup_steps=0" if steps is not None and steps > 0
                  else "scheduler.warmup_fraction=0" if steps is None and fraction > 0 else None)
    # transformers' `get_constant_schedule` takes no warmup: a warmup must not vanish unnoticed.
    if warmup_key and "num_warmup_steps" not in parameters(target):
        raise ConfigError(f"{_option_name(settings)} has no warmup; use scheduler=constant_with_warmup "
                          f"to warm up, or set {warmup_key}.")


def build_scheduler(optimizer: torch.optim.Optimizer, settings: dict[str, Any],
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule over `total_steps` optimizer steps; step it once per optimizer step."""
    check_scheduler_node(settings)
    warmup = warmup_steps_for(total_steps, settings.get("warmup_fraction", 0.0), settings.get("warmup_steps"))
    return instantiate_node(_target_node(settings), "scheduler", _WIRED, optimizer=optimizer,
                            num_warmup_steps=warmup, num_training_steps=total_steps)

"""Per-step learning-rate schedules: the `scheduler` group's `_target_` function, called with the
optimizer and, where it takes them, num_warmup_steps and num_training_steps (in optimizer steps).
The shipped options use the four schedules below; any function with transformers' schedule
signature works (`scheduler._target_=transformers.get_polynomial_decay_schedule_with_warmup`).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from ftexp.builders.targets import check_node, instantiate_node, parameters
from ftexp.runs.errors import ConfigError

# Keys of the scheduler group that ftexp reads itself; every other key is the target's argument.
_FTEXP_KEYS = ("warmup_fraction", "warmup_steps", "learning_rate_scaling")
_WIRED = ("optimizer", "num_warmup_steps", "num_training_steps")


# transformers' constant / linear / cosine schedules, the same formulas step for step (tests/test_optim.py
# compares them). Written out because `transformers.optimization` imports the Trainer's utilities,
# and with them PEFT and bitsandbytes: 1.3 s of every run's start-up (a smoke run 9.1 -> 7.8 s on
# 2 cores) and 53 MiB, for four closed-form functions.
def _warmup(step: int, warmup: int) -> float:
    return float(step) / float(max(1, warmup))


def _constant(_: int) -> float:
    return 1.0


def _constant_after_warmup(step: int, *, num_warmup_steps: int) -> float:
    return _warmup(step, num_warmup_steps) if step < num_warmup_steps else 1.0


def _linear_after_warmup(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    return max(0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps)))


def _cosine_after_warmup(step: int, *, num_warmup_steps: int, num_training_steps: int,
                         num_cycles: float) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def constant(optimizer: torch.optim.Optimizer, last_epoch: int = -1) -> LambdaLR:
    """The optimizer's learning rate throughout."""
    return LambdaLR(optimizer, _constant, last_epoch)


def constant_with_warmup(optimizer: torch.optim.Optimizer, num_warmup_steps: int,
                         last_epoch: int = -1) -> LambdaLR:
    """Linear warmup from 0 over num_warmup_steps, then the optimizer's learning rate."""
    return LambdaLR(optimizer, partial(_constant_after_warmup, num_warmup_steps=num_warmup_steps), last_epoch)


def linear_with_warmup(optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int,
                       last_epoch: int = -1) -> LambdaLR:
    """Linear warmup from 0, then linear decay to 0 at num_training_steps."""
    schedule = partial(_linear_after_warmup, num_warmup_steps=num_warmup_steps,
                       num_training_steps=num_training_steps)
    return LambdaLR(optimizer, schedule, last_epoch)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int,
                       num_cycles: float = 0.5, last_epoch: int = -1) -> LambdaLR:
    """Linear warmup from 0, then cosine decay (num_cycles=0.5: half a wave, down to 0)."""
    schedule = partial(_cosine_after_warmup, num_warmup_steps=num_warmup_steps,
                       num_training_steps=num_training_steps, num_cycles=num_cycles)
    return LambdaLR(optimizer, schedule, last_epoch)


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
    # A schedule without warmup (`constant`) must not drop a warmup unnoticed.
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

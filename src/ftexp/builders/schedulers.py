"""Per-step learning-rate schedules, by transformers' scheduler functions.

linear: linear warmup from 0, then linear decay to 0 at total_steps.
cosine: linear warmup from 0, then half-cosine decay to 0 at total_steps.
constant: flat at the peak rate from step 0 (no warmup).
constant_with_warmup: linear warmup from 0, then flat.
"""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")


def warmup_steps_for(total_steps: int, warmup_fraction: float = 0.0, warmup_steps: int | None = None) -> int:
    """An explicit warmup_steps wins over warmup_fraction; never more than total_steps."""
    if warmup_steps is None:
        # Round first so float noise (0.07 * 100 = 7.000000000000001) does not ceil to one step more.
        warmup_steps = math.ceil(round(warmup_fraction * total_steps, 6))
    return min(int(warmup_steps), total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                    warmup_fraction: float = 0.0,
                    warmup_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """`name` from SCHEDULES; step it once per optimizer step."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULES)}")
    warmup = warmup_steps_for(total_steps, warmup_fraction, warmup_steps)
    # transformers' `constant` silently ignores warmup; callers validate the config earlier,
    # this guard keeps a warmup from vanishing unnoticed.
    if name == "constant" and warmup > 0:
        raise ValueError("scheduler=constant has no warmup; use scheduler=constant_with_warmup")
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)

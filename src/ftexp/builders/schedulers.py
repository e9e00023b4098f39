"""Learning-rate schedules: warmup then decay, by transformers' scheduler functions."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

# scheduler.name → transformers' schedule. Ours all honour warmup, so `constant` is theirs
# `constant_with_warmup` (with warmup_fraction 0 it is flat).
SCHEDULES = {"linear": "linear", "constant": "constant_with_warmup"}


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
    return int(math.ceil(warmup_fraction * total_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_fraction: float,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warmup from 0 over warmup_fraction of total_steps, then
    linear decay to 0 (`linear`) or a flat rate (`constant`)."""
    return get_scheduler(SCHEDULES[name], optimizer,
                         num_warmup_steps=warmup_steps_for(total_steps, warmup_fraction),
                         num_training_steps=total_steps)

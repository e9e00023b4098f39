"""AdamW over the trainable parameters, with no weight decay on biases and norm weights."""

from __future__ import annotations

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Decaying biases and normalisation gains only shrinks what should stay free.
        skip = param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    # torch picks its multi-tensor (foreach) kernel on GPU. Not `fused=True`: Lightning's mixed
    # precision refuses gradient clipping with fused optimizers (seen on an H100).
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate)

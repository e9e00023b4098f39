"""Optimizers over the trainable parameters (the `optimizer` group's `_target_` class), and the
learning-rate defaults that go with them."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ftexp.builders.targets import check_node, instantiate_node, parameters
from ftexp.config import ADAPTERS, SchedulerConfig
from ftexp.errors import ConfigError

# Keys of the optimizer group that ftexp reads itself; every other key is the target's argument.
_FTEXP_KEYS = ("learning_rate", "weight_decay", "fused")
# Arguments ftexp passes: the parameter groups and the resolved learning rate.
_WIRED = ("params", "lr")

LR_SCALING_RULES = SchedulerConfig.CHOICES["learning_rate_scaling"]

# Lightning 2.x still accepts the legacy "16" / "bf16" spellings and runs them as mixed precision.
_MIXED_PRECISIONS = frozenset({"16-mixed", "bf16-mixed", "16", "bf16"})


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


def _target_node(settings: dict[str, Any]) -> dict[str, Any]:
    """The node handed to the target: its own keys, without ftexp's and without nulls (a null
    betas / eps means "not an argument of this optimizer")."""
    return {k: v for k, v in settings.items() if k not in _FTEXP_KEYS and v is not None}


def check_optimizer_node(settings: dict[str, Any]) -> None:
    """Before the model loads: the target imports and takes the node's keys."""
    target = check_node(_target_node(settings), "optimizer", wired=_WIRED)
    if settings.get("fused") is True and "fused" not in parameters(target):
        raise ConfigError(f"optimizer.fused=true: {settings['_target_']} has no fused kernel; "
                          "set optimizer.fused=auto.")


def build_optimizer(model: nn.Module, settings: dict[str, Any], learning_rate: float,
                    fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer group's target over the trainable parameters of `model`; weight decay is
    per parameter group (see parameter_groups). `fused` only where the target takes it."""
    groups = parameter_groups(model, settings.get("weight_decay", 0.0))
    # `fused` reaches only targets that name it. None (not False) lets torch pick its foreach
    # kernel on GPU; fused only when asked, see use_fused_adamw for when that is safe.
    return instantiate_node(_target_node(settings), "optimizer", _WIRED, params=groups, lr=learning_rate,
                            fused=True if fused else None)


def auto_learning_rate(adapter_method: str) -> float:
    """Default peak learning rate for a fine-tuning method; unknown methods get the LoRA value
    since most adapters train a small number of new weights like LoRA does."""
    method = ADAPTERS.get(adapter_method, ADAPTERS["lora"])
    return method.auto_learning_rate


def scale_learning_rate(learning_rate: float, world_size: int, rule: str) -> float:
    """Scale for data-parallel training, where the global batch grows with world_size."""
    if rule == "none":
        return learning_rate
    if rule == "linear":
        return learning_rate * world_size
    if rule == "sqrt":
        return learning_rate * math.sqrt(world_size)
    raise ValueError(f"unknown learning-rate scaling rule {rule!r}; expected one of "
                     f"{', '.join(LR_SCALING_RULES)}")


def use_fused_adamw(accelerator_is_cuda: bool, precision: str, gradient_clip_val: float | None) -> bool:
    """Fused AdamW is the fastest CUDA kernel, but it unscales gradients inside its own step, and
    Lightning's MixedPrecision plugin raises on gradient clipping with such optimizers (it must
    unscale before clipping). So: CUDA only, and not mixed precision together with clipping."""
    if not accelerator_is_cuda:
        return False
    clipping = gradient_clip_val is not None and gradient_clip_val > 0
    return not (str(precision) in _MIXED_PRECISIONS and clipping)

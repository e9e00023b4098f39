"""Decide which backbone weights train: all of them (full fine-tuning) or none (frozen)."""

from __future__ import annotations

from torch import nn

METHODS = ("none", "frozen")


def apply_adapter(backbone: nn.Module, method: str) -> nn.Module:
    """Return the backbone prepared for `method`; the task head is always trainable."""
    if method == "none":
        backbone.requires_grad_(True)
    elif method == "frozen":
        backbone.requires_grad_(False)
    else:
        raise ValueError(f"unknown adapter method {method!r}; expected one of {METHODS}")
    return backbone


def backbone_is_frozen(method: str) -> bool:
    return method == "frozen"


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return trainable, total

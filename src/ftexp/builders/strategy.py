"""Device-level choices handed to the Lightning Trainer: strategy and numeric precision."""

from __future__ import annotations

import torch

STRATEGIES = ("auto",)


def build_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")
    return name


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix units (AVX512-BF16 / AMX), where autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` → bf16-mixed where the hardware runs bf16 natively, else 32; others unchanged."""
    if precision != "auto":
        return precision
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_has_bf16():
        return "bf16-mixed"
    return "32-true"

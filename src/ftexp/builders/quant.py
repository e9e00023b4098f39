"""k-bit quantization of the backbone's weights. Only `none` exists so far."""

from __future__ import annotations

METHODS = ("none",)


def quantization_config(method: str) -> None:
    """The transformers quantization config for `method` (None: keep model.dtype weights)."""
    if method != "none":
        raise ValueError(f"unknown quant method {method!r}; expected one of {METHODS}")
    return None

"""k-bit quantization of the backbone: bitsandbytes (8-bit LLM.int8, 4-bit NF4/FP4) and EETQ
(int8 weight-only, CUDA) while loading, through transformers' configs; HQQ after loading
(builders/hqq.py)."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from ftexp.builders.hqq import dequantize_hqq, has_hqq_layers, hqq_quantization
from ftexp.config.quant import QuantConfig
from ftexp.runs.errors import ConfigError

METHODS = QuantConfig.CHOICES["method"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "uint8": torch.uint8}


def require_bitsandbytes(method: str) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"quant={method} needs bitsandbytes, which is not installed; "
                          "run: pip install 'ftexp[quant]' (or pip install bitsandbytes).")


def _eetq_config(skip: list[str] | None) -> Any:
    if not torch.cuda.is_available():
        raise ConfigError("quant=eetq runs EETQ's int8 weight-only CUDA kernels, and this machine has no "
                          "CUDA device; use quant=hqq or quant=8bit on CPU.")
    # transformers 5 runs EETQ through the `kernels` package (a Hub kernel, fetched on first use).
    if importlib.util.find_spec("kernels") is None:
        raise ConfigError("quant=eetq needs the package 'kernels' (transformers' EETQ kernels), which is "
                          "not installed; run: pip install 'ftexp[eetq]'.")
    from transformers import EetqConfig

    return EetqConfig(weights="int8", modules_to_not_convert=skip or ["lm_head"])


def quantization_config(quant: dict[str, Any]) -> Any:
    """What the quant group quantizes with: a transformers config load_backbone passes to
    from_pretrained (bitsandbytes, EETQ), an HqqQuantization it applies after loading, or None
    for `none`."""
    method = quant["method"]
    if method == "none":
        return None
    if method not in METHODS:
        raise ValueError(f"unknown quant method {method!r}; expected one of {METHODS}")
    if method == "hqq":
        return hqq_quantization(quant, _DTYPES)
    skip = list(quant.get("skip_modules") or []) or None
    if method == "eetq":
        return _eetq_config(skip)
    require_bitsandbytes(method)
    from transformers import BitsAndBytesConfig

    if method == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=quant["llm_int8_threshold"],
                                  llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant["quant_type"],
        bnb_4bit_use_double_quant=quant["double_quant"],
        bnb_4bit_compute_dtype=_DTYPES[quant["compute_dtype"]],
        bnb_4bit_quant_storage=_DTYPES[quant["storage_dtype"]], llm_int8_skip_modules=skip)


def prepare_for_kbit_training(model: nn.Module, upcast_norms: bool) -> nn.Module:
    """Freeze the quantized base and, optionally, keep norm weights in fp32.

    Written here rather than using peft.prepare_model_for_kbit_training, which casts every
    non-quantized parameter (embeddings included) to fp32 and can cost more memory than a
    bf16 LoRA run.
    """
    model.requires_grad_(False)
    for module in model.modules():
        # bitsandbytes (0.50) repacks 4-bit weights into a CPU inference layout at the first
        # no-grad eval forward and never packs them back, so training after a validation pass
        # silently runs on a wrong layout (loss stuck at chance). Keep the training layout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    if upcast_norms:
        for module in model.modules():
            if "norm" in type(module).__name__.lower():
                module.float()
    return model


def dequantize(model: nn.Module) -> nn.Module:
    """The quantized model with plain Linear layers holding the dequantized weights, for export
    and for merging an adapter (HQQ layers here; bitsandbytes / EETQ through transformers)."""
    if has_hqq_layers(model):
        return dequantize_hqq(model)
    return model.dequantize()

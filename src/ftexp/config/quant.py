"""The `quant` group: k-bit weights through bitsandbytes (8bit, 4bit), HQQ (hqq) or EETQ (eetq)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from ftexp.config.base import DTYPES, GroupSchema


@dataclass
class QuantConfig(GroupSchema):
    # none | 8bit (LLM.int8) | 4bit (QLoRA-style NF4/FP4), via bitsandbytes | hqq (Half-Quadratic
    # Quantization, 1-8 bits, CPU or GPU) | eetq (int8 weight-only, CUDA)
    method: str = "none"
    quant_type: str = "nf4"  # 4bit: nf4 | fp4
    double_quant: bool = True  # 4bit: quantize the quantization constants too (~0.4 bit/param)
    compute_dtype: str = "bfloat16"  # 4bit, hqq: dtype the matmuls run in
    nbits: int = 4  # hqq: bits per weight (1, 2, 3, 4 or 8)
    group_size: int = 64  # hqq: weights sharing one scale and zero
    axis: int = 1  # hqq: the weight axis the groups run along (1: along each output row's inputs)
    storage_dtype: str = "uint8"  # 4bit: packed-weight dtype; = compute_dtype for FSDP sharding
    llm_int8_threshold: float = 6.0  # 8bit: outlier threshold for mixed int8/fp16 matmul
    skip_modules: Optional[list[str]] = None  # modules kept unquantized (null: lm_head for hqq / eetq)
    # Cast only norm weights to fp32 for stability; never the whole model (that would undo the
    # memory saving, as peft.prepare_model_for_kbit_training does).
    upcast_norms: bool = True

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "method": ("none", "8bit", "4bit", "hqq", "eetq"), "quant_type": ("nf4", "fp4"),
        "compute_dtype": DTYPES,
        "storage_dtype": ("uint8", *DTYPES)}

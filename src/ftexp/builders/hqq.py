"""quant=hqq: Half-Quadratic Quantization (Badri & Shaji 2023, the `hqq` package) of the
backbone's Linear layers, on CPU or GPU, with no calibration data.

Written here, not through transformers' HqqConfig, because transformers 5.x accepts that config
but loads nothing with it ("QuantizationMethod.HQQ is not available yet"). The model loads
unquantized and each Linear is replaced by hqq's own HQQLinear, with HqqConfig's defaults
(4 bits, groups of 64 along axis 1, lm_head kept); PEFT's LoRA wraps HQQLinear itself
(peft.tuners.lora.hqq), and `dequantize` turns the layers back into plain Linear ones for export
and merging."""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ftexp.runs.errors import ConfigError

HQQ_BITS = (1, 2, 3, 4, 8)  # the widths hqq packs


def require_hqq() -> None:
    if importlib.util.find_spec("hqq") is None:
        raise ConfigError("quant=hqq needs the package 'hqq', which is not installed; "
                          "run: pip install 'ftexp[hqq]'.")


def _device() -> torch.device:
    """Where the quantized weights live: HQQLinear keeps its scales and zeros outside the module's
    tensors, so a later model.to(device) would not move them; quantize where the run trains
    (the current CUDA device, which Lightning has set per rank, else the CPU)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@functools.cache
def _casting_hqq_linear() -> type:
    from hqq.core.quantize import HQQLinear

    class CastingHQQLinear(HQQLinear):
        """HQQLinear computing in its compute_dtype whatever the input's dtype, and answering in
        the input's, as bitsandbytes' layers do. hqq's own matmul needs the input in the compute
        dtype, which a 32-bit run over a bf16-computing base does not give it, nor its custom
        backward (which runs outside autocast) under mixed precision. hqq binds `forward` to
        one of these backend methods by name (HQQLinear.set_backend), so they are the ones
        overridden: the two PyTorch backends, which run on CPU and GPU."""

        def forward_pytorch_backprop(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward_pytorch_backprop(x.to(self.compute_dtype)).to(x.dtype)

        def forward_pytorch(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward_pytorch(x.to(self.compute_dtype)).to(x.dtype)

    return CastingHQQLinear


def is_hqq_layer(module: nn.Module) -> bool:
    return any(cls.__name__ == "HQQLinear" for cls in type(module).__mro__)


@dataclass(frozen=True)
class HqqQuantization:
    """The quant group's hqq settings, applied to a loaded model by `quantize`."""
    nbits: int = 4
    group_size: int = 64
    axis: int = 1
    compute_dtype: torch.dtype = torch.bfloat16
    skip_modules: tuple[str, ...] = ("lm_head",)

    def check(self) -> None:
        if self.nbits not in HQQ_BITS:
            raise ConfigError(f"quant.nbits={self.nbits} is not a width hqq packs; choose one of "
                              f"{', '.join(map(str, HQQ_BITS))}.")
        if self.group_size < 1:
            raise ConfigError(f"quant.group_size={self.group_size} must be at least 1.")
        if self.axis not in (0, 1):
            raise ConfigError(f"quant.axis={self.axis} must be 0 or 1 (the weight axis groups run along).")

    def quantize(self, model: nn.Module) -> nn.Module:
        """Replace, in place, every Linear whose name does not end in a skip_modules entry."""
        require_hqq()
        from hqq.core.quantize import BaseQuantizeConfig

        config = BaseQuantizeConfig(nbits=self.nbits, group_size=self.group_size, axis=self.axis)
        device = _device()
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{name}.{child_name}" if name else child_name
                skipped = any(full == s or full.endswith(f".{s}") for s in self.skip_modules)
                if not isinstance(child, nn.Linear) or skipped:
                    continue
                if child.in_features % self.group_size and self.axis == 1:
                    raise ConfigError(f"quant.group_size={self.group_size} does not divide {full}'s "
                                      f"{child.in_features} inputs; choose a divisor (e.g. 32 or 64).")
                setattr(module, child_name, _casting_hqq_linear()(
                    child, config, compute_dtype=self.compute_dtype, device=str(device), del_orig=True))
        return model


def hqq_quantization(quant: dict[str, Any], dtypes: dict[str, torch.dtype]) -> HqqQuantization:
    settings = HqqQuantization(nbits=quant["nbits"], group_size=quant["group_size"], axis=quant["axis"],
                               compute_dtype=dtypes[quant["compute_dtype"]],
                               skip_modules=tuple(quant.get("skip_modules") or ("lm_head",)))
    settings.check()
    require_hqq()
    return settings


def has_hqq_layers(model: nn.Module) -> bool:
    return any(is_hqq_layer(m) for m in model.modules())


def hqq_all_linear(model: nn.Module) -> list[str]:
    """PEFT's target_modules=all-linear for a model with HQQ layers, which PEFT's own resolution
    does not count as linear: the names of its Linear and HQQLinear layers, the output layer
    left out (as PEFT leaves it)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if (isinstance(m, nn.Linear) or is_hqq_layer(m)) and m is not output})


def dequantize_hqq(model: nn.Module) -> nn.Module:
    """Every HQQLinear back to a plain Linear holding its dequantized weight (and its bias)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if not is_hqq_layer(child):
                continue
            weight = child.dequantize()
            linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                               device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if child.bias is not None:
                    linear.bias.copy_(child.bias)
            setattr(module, child_name, linear)
    return model

"""Bytes of a quantized base against bf16: the transformer blocks' Linear weights of a random-init
Llama of Llama-2-7B's width (hidden 4,096, MLP 11,008), as each quantization stores them (codes,
scales, zeros, absmax: every tensor its saved state holds), with the reconstruction error of the
weights and the seconds quantizing took. HQQ at 8 / 4 / 3 / 2 bits (quant=hqq) and the
bitsandbytes peers (quant=4bit NF4 with double quantization, quant=8bit LLM.int8), measured in the
same run on the same weights.

    python benchmarks/quant_memory.py [--layers 1 --group-size 64]

CPU (bitsandbytes 0.49+ runs its 4/8-bit layers there); needs hqq and bitsandbytes.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
from torch import nn

from ftexp.builders.backbone import load_backbone
from ftexp.builders.hqq import HqqQuantization, is_hqq_layer
from ftexp.builders.quant import dequantize, quantization_config


def architecture(layers: int) -> dict:
    return {"model_type": "llama", "vocab_size": 1024, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": 32}


def block_linears(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if ".layers." in n and (isinstance(m, nn.Linear) or is_hqq_layer(m) or hasattr(m, "quant_state")
                                    or type(m).__name__.startswith("Linear8bit"))}


def stored_bytes(layer: nn.Module) -> int:
    """Every tensor the layer's saved state holds (bitsandbytes packs its quantization state into
    the state dict, HQQ its scales and zeros)."""
    return sum(t.numel() * t.element_size() for t in layer.state_dict().values() if torch.is_tensor(t))


def relative_error(model: nn.Module, reference: dict[str, torch.Tensor]) -> float:
    restored = {n: m.weight.float() for n, m in block_linears(dequantize(model)).items()}
    error = sum(float((restored[n] - w).pow(2).sum()) for n, w in reference.items())
    return (error / sum(float(w.pow(2).sum()) for w in reference.values())) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    arch = architecture(args.layers)
    base = load_backbone("random-init", random_init=arch, dtype="bfloat16", causal_lm=True)
    reference = {n: m.weight.detach().float().clone() for n, m in block_linears(base).items()}
    bf16 = sum(stored_bytes(m) for m in block_linears(base).values())
    rows = [("bf16 (none)", bf16, 0.0, 0.0)]
    for bits in (8, 4, 3, 2):
        settings = HqqQuantization(nbits=bits, group_size=args.group_size, compute_dtype=torch.bfloat16)
        start = time.perf_counter()
        model = settings.quantize(copy.deepcopy(base))
        seconds = time.perf_counter() - start
        size = sum(stored_bytes(m) for m in block_linears(model).values())
        rows.append((f"hqq {bits}-bit, groups of {args.group_size}", size, relative_error(model, reference),
                     seconds))
        del model
    peers = {"bitsandbytes nf4 + double quant (4bit)": {
        "method": "4bit", "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16",
        "storage_dtype": "uint8"},
        "bitsandbytes LLM.int8 (8bit)": {"method": "8bit", "llm_int8_threshold": 6.0}}
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        for label, quant in peers.items():
            start = time.perf_counter()
            model = load_backbone(tmp, dtype="bfloat16", causal_lm=True,
                                  quantization_config=quantization_config(quant))
            seconds = time.perf_counter() - start  # load + quantize
            size = sum(stored_bytes(m) for m in block_linears(model).values())
            rows.append((label, size, relative_error(model, reference), seconds))
            del model
    weights = sum(w.numel() for w in reference.values())
    print(f"\nblock Linear weights of {args.layers} Llama-2-7B-wide layer(s): {weights / 1e6:.1f}M\n")
    print("| quantization | stored MiB | bits / weight | vs bf16 | weight error (rel.) | seconds |")
    print("|---|---|---|---|---|---|")
    for label, size, error, seconds in rows:
        print(f"| {label} | {size / 2**20:,.1f} | {8 * size / weights:.2f} | {size / bf16:.3f}× | "
              f"{error:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()

"""Peak GPU memory and trainable parameters of LoRA on a random-init Llama: bf16 vs 8-bit vs
4-bit (NF4) bases, plus PEFT's own k-bit preparation as the peer for ours.

    python benchmarks/gpu_quant_memory.py [--hidden 2048 --layers 12 --steps 30]

Needs CUDA and bitsandbytes. Each configuration trains a classifier (LoRA on all linear layers
+ linear head, pooled on the last token) on a learnable synthetic task — random tokens ending
in one of two marker tokens, the marker being the class — and reports the loss at the start and
the end, so a run that does not learn shows up in the table. "stored" counts stored elements
(a 4-bit weight packs two per byte).
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.nn.functional as F

from ftexp.builders.adapter import apply_adapter, count_parameters
from ftexp.builders.backbone import load_backbone
from ftexp.builders.quant import prepare_for_kbit_training, quantization_config
from ftexp.tasks.pooled_model import PooledHeadModel

QUANT = {
    "none": {"method": "none"},
    "8bit": {"method": "8bit", "llm_int8_threshold": 6.0},
    "4bit": {"method": "4bit", "quant_type": "nf4", "double_quant": True,
             "compute_dtype": "bfloat16", "storage_dtype": "uint8"},
}
MARKERS = torch.tensor([11, 12], device="cuda" if torch.cuda.is_available() else "cpu")
LORA = {"method": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}


def build(arch: dict, quant: str, preparation: str) -> PooledHeadModel:
    backbone = load_backbone("random", random_init=arch, dtype="bfloat16",
                             quantization_config=quantization_config(QUANT[quant]))
    if quant != "none":
        if preparation == "ftexp":
            backbone = prepare_for_kbit_training(backbone, upcast_norms=True)
        else:  # the peer: PEFT's helper, which casts every non-quantized weight to fp32
            import peft

            backbone = peft.prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
    backbone = apply_adapter(backbone, LORA)
    return PooledHeadModel(backbone, num_outputs=2, pooling="last", dropout=0.0).cuda()


def measure(arch: dict, quant: str, preparation: str, steps: int, batch: int, seq: int,
            lr: float) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build(arch, quant, preparation)
    loaded = torch.cuda.max_memory_allocated()
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator(device="cuda").manual_seed(0)
    losses = []
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        ids = torch.randint(100, arch["vocab_size"], (batch, seq), device="cuda", generator=generator)
        labels = torch.randint(0, 2, (batch,), device="cuda", generator=generator)
        ids[:, -1] = MARKERS[labels]  # the last token says the class
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids, torch.ones_like(ids))
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    row = {"quant": quant, "prep": preparation if quant != "none" else "-",
           "load_gib": loaded / 2**30, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
           "trainable": trainable, "total": total, "s_per_step": seconds,
           "loss_start": sum(losses[:5]) / 5, "loss_end": sum(losses[-5:]) / 5}
    del model, optimizer
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)  # 1e-4 barely moves the loss in 40 steps
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_quant_memory: needs a CUDA GPU")
    arch = {"model_type": "llama", "vocab_size": 32000, "hidden_size": args.hidden,
            "num_hidden_layers": args.layers, "num_attention_heads": args.hidden // 128,
            "num_key_value_heads": args.hidden // 128, "intermediate_size": int(args.hidden * 2.6875),
            "max_position_embeddings": 2048}
    rows = [measure(arch, "none", "ftexp", args.steps, args.batch, args.seq, args.lr)]
    for quant in ("8bit", "4bit"):
        for preparation in ("ftexp", "peft"):
            rows.append(measure(arch, quant, preparation, args.steps, args.batch, args.seq, args.lr))

    print(f"\nGPU: {torch.cuda.get_device_name()} | Llama {args.layers}x{args.hidden}, "
          f"batch {args.batch}x{args.seq}, LoRA r=16 all-linear, lr {args.lr}, {args.steps} steps, "
          "bf16 autocast")
    header = (f"{'quant':<6} {'prep':<6} {'load GiB':>9} {'peak GiB':>9} {'vs bf16':>8} "
              f"{'trainable':>11} {'stored':>13} {'s/step':>7} {'loss start→end':>16}")
    print(header)
    print("-" * len(header))
    base = rows[0]["peak_gib"]
    for r in rows:
        print(f"{r['quant']:<6} {r['prep']:<6} {r['load_gib']:>9.3f} {r['peak_gib']:>9.3f} "
              f"{r['peak_gib'] / base:>7.2f}x {r['trainable']:>11,} {r['total']:>13,} "
              f"{r['s_per_step']:>7.3f} {r['loss_start']:>7.3f}→{r['loss_end']:<7.3f}")


if __name__ == "__main__":
    main()

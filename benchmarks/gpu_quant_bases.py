"""LoRA on the quantized bases beyond bitsandbytes, on one CUDA GPU: quant=hqq (4-bit), quant=eetq
(int8 weight-only) and a base saved GPTQ-quantized (`--gptq DIR`, a GPTQ checkpoint of a Llama
model, with the backend transformers asks for installed). Each row builds the base as a run does
(builders/backbone.py), puts LoRA on every linear layer, trains a fixed batch for a few steps and
reports the loss at the start and the end, peak memory and the base's weight bytes against bf16;
a backend that is not installed gives a `skipped` row saying which.

    python benchmarks/gpu_quant_bases.py [--hidden 1024 --layers 4 --steps 20 --gptq DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from typing import Any

import torch

from ftexp.builders.adapter import apply_adapter
from ftexp.builders.backbone import load_backbone
from ftexp.builders.quant import prepare_for_kbit_training, quantization_config

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LORA = {"method": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for name, t in model.state_dict().items()
               if ".layers." in name and torch.is_tensor(t))


def train(model: torch.nn.Module, steps: int, vocab: int) -> tuple[float, float]:
    model = apply_adapter(prepare_for_kbit_training(model, upcast_norms=True), LORA, task_type="CAUSAL_LM")
    model.to(DEVICE).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    ids = torch.randint(0, vocab, (4, 256), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    losses = []
    for _ in range(steps):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def row(label: str, build: Any, needs: str | None, steps: int, vocab: int, bf16: int) -> str:
    if needs and importlib.util.find_spec(needs) is None:
        return f"| {label} | skipped: the {needs} package is not installed | | | |"
    if needs == "kernels" and DEVICE != "cuda":
        return f"| {label} | skipped: CUDA only | | | |"
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build()
    size = weight_bytes(model)
    first, last = train(model, steps, vocab)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
    verdict = "learns" if last < first - 0.1 else "DOES NOT LEARN"
    return f"| {label} | {first:.3f} → {last:.3f} ({verdict}) | {peak:.2f} | {size / bf16:.3f}× | ok |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gptq", help="a GPTQ-quantized Llama checkpoint directory")
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU (no CUDA rows)")
    args = parser.parse_args()
    if DEVICE != "cuda" and not args.dry_run:
        raise SystemExit("gpu_quant_bases.py needs a CUDA device (--dry-run: the same code on the CPU)")
    arch = {"model_type": "llama", "vocab_size": 32000, "hidden_size": args.hidden,
            "intermediate_size": -(-args.hidden * 11 // 4 // 256) * 256, "num_hidden_layers": args.layers,
            "num_attention_heads": args.hidden // 64, "num_key_value_heads": args.hidden // 64}
    with tempfile.TemporaryDirectory() as tmp:
        random = load_backbone("random-init", random_init=arch, dtype="bfloat16", causal_lm=True)
        random.save_pretrained(tmp)
        bf16 = weight_bytes(load_backbone(tmp, dtype="bfloat16", causal_lm=True))

        def base(quant: dict[str, Any]) -> Any:
            return lambda: load_backbone(tmp, dtype="bfloat16", causal_lm=True,
                                         quantization_config=quantization_config(quant))

        hqq = {"method": "hqq", "nbits": 4, "group_size": 64, "axis": 1, "compute_dtype": "bfloat16"}
        vocab = arch["vocab_size"]
        rows = [row("bf16 (none)", base({"method": "none"}), None, args.steps, vocab, bf16),
                row("quant=hqq 4-bit", base(hqq), "hqq", args.steps, vocab, bf16),
                row("quant=eetq int8", base({"method": "eetq"}), "kernels", args.steps, vocab, bf16)]
    if args.gptq:
        gptq = load_backbone(args.gptq, dtype="bfloat16", causal_lm=True)
        vocab = gptq.config.vocab_size
        rows.append(row(f"saved GPTQ ({args.gptq})", lambda: gptq, None, args.steps, vocab,
                        2 * sum(p.numel() for p in gptq.parameters())))
    else:
        rows.append("| saved GPTQ base | skipped: pass --gptq DIR (a GPTQ checkpoint) | | | |")
    print(f"\nLoRA r16 on all linear layers, Llama {args.layers}×{args.hidden}, batch 4×256, "
          f"{args.steps} steps, {DEVICE}")
    print("| base | loss first → last | peak GiB | block weights vs bf16 | status |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

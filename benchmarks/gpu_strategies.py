"""LoRA and QLoRA under each strategy on one GPU: does the loss fall, does the checkpoint load on
one device (export → plain transformers), and what does each strategy cost in peak memory.

    python benchmarks/gpu_strategies.py [--layers 8 --hidden 1024 --samples 400 --out /tmp/strategies]

Needs CUDA; DeepSpeed rows need `pip install 'ftexp[deepspeed]'` (skipped, and said so, without
it); QLoRA rows need bitsandbytes. Each row is a real `python -m ftexp` run (task=causal_lm on the
shipped CodeAlpaca sample, a random-init Llama) followed by `python -m ftexp.export` of its run
dir and a forward pass of the exported model with plain transformers. `auto` (one device, no
sharding) is the peer the other strategies are compared with.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
METHODS = {"lora": ["quant=none", "model.dtype=bfloat16"],
           # Sharded strategies need the 4-bit weights stored in the compute dtype.
           "qlora": ["quant=4bit", "quant.storage_dtype=bfloat16", "model.dtype=bfloat16"]}


def llama(args: argparse.Namespace) -> list[str]:
    heads = args.hidden // 64
    return ["model=tiny_llama", f"model.random_init.hidden_size={args.hidden}",
            f"model.random_init.num_hidden_layers={args.layers}",
            f"model.random_init.num_attention_heads={heads}",
            f"model.random_init.num_key_value_heads={heads}",
            f"model.random_init.intermediate_size={int(args.hidden * 2.6875)}"]


def losses(run: Path) -> tuple[float, float]:
    """Mean of the first and of the last five logged training losses."""
    with open(run / "csv" / "metrics.csv") as f:
        values = [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    return sum(values[:5]) / len(values[:5]), sum(values[-5:]) / len(values[-5:])


def exported_forward_ok(run: Path) -> bool:
    """Export the run and run one forward pass of the result with plain transformers."""
    target = run / "export"
    done = subprocess.run([sys.executable, "-m", "ftexp.export", str(run), "-o", str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-2000:])
        return False
    probe = ("import torch, transformers as t; m = t.AutoModelForCausalLM.from_pretrained(%r); "
             "print(bool(torch.isfinite(m(torch.tensor([[1, 2, 3]])).logits).all()))" % str(target))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip().endswith("True")


def run(strategy: str, method: str, args: argparse.Namespace) -> dict:
    out = args.out / f"{strategy}_{method}"
    command = [sys.executable, "-m", "ftexp", "task=causal_lm", "data=code_alpaca", "adapter=lora",
               *llama(args), *METHODS[method], f"strategy={strategy}", "trainer.accelerator=gpu",
               "trainer.devices=1", "trainer.precision=bf16-mixed", "trainer.max_epochs=1",
               f"data.max_train_samples={args.samples}", "data.max_length=256", "data.batch_size=4",
               "optimizer.learning_rate=1e-3", "trainer.log_every_n_steps=5",
               "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        return {"strategy": strategy, "method": method, "status": "failed: " + done.stderr.strip()[-200:]}
    metrics = json.loads((out / "metrics.json").read_text())
    start, end = losses(out)
    return {"strategy": strategy, "method": method, "status": "ok", "loss_start": start, "loss_end": end,
            "peak_gib": metrics["peak_memory_gib"], "fit_s": metrics["fit_seconds"],
            "export_loads": exported_forward_ok(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/strategies"))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_strategies: needs a CUDA GPU")
    has_deepspeed = importlib.util.find_spec("deepspeed") is not None
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    rows = []
    for strategy in args.strategies:
        for method in METHODS:
            if strategy.startswith("deepspeed") and not has_deepspeed:
                rows.append({"strategy": strategy, "method": method, "status": "skipped: no deepspeed"})
            elif method == "qlora" and not has_bnb:
                rows.append({"strategy": strategy, "method": method, "status": "skipped: no bitsandbytes"})
            else:
                rows.append(run(strategy, method, args))
            print(rows[-1], flush=True)

    peer = {r["method"]: r["peak_gib"] for r in rows if r["strategy"] == "auto" and r["status"] == "ok"}
    print(f"\nGPU: {torch.cuda.get_device_name()} | Llama {args.layers}x{args.hidden} random init, "
          f"causal LM on {args.samples} CodeAlpaca rows, batch 4x256, bf16-mixed, one device")
    header = (f"{'strategy':<16} {'method':<6} {'loss start→end':>16} {'falls':>6} {'peak GiB':>9} "
              f"{'vs auto':>8} {'fit s':>7} {'export loads':>13}  status")
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['strategy']:<16} {r['method']:<6} {'':>16} {'':>6} {'':>9} {'':>8} {'':>7} {'':>13}  "
                  f"{r['status']}")
            continue
        ratio = r["peak_gib"] / peer[r["method"]] if r["method"] in peer else float("nan")
        print(f"{r['strategy']:<16} {r['method']:<6} {r['loss_start']:>7.3f}→{r['loss_end']:<8.3f} "
              f"{'yes' if r['loss_end'] < r['loss_start'] else 'NO':>6} {r['peak_gib']:>9.3f} "
              f"{ratio:>7.2f}x {r['fit_s']:>7.1f} {'yes' if r['export_loads'] else 'NO':>13}  ok")


if __name__ == "__main__":
    main()

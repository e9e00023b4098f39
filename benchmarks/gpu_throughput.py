"""Training throughput on one GPU: plain transformers + PEFT vs ftexp's own training step.

    python benchmarks/gpu_throughput.py                      # Llama-3.2-1B shape, CUDA, bf16
    python benchmarks/gpu_throughput.py --dry-run            # the same code on a tiny model, CPU, 2 steps

Both sides train the same random-init weights (saved once to a temporary folder and loaded by
each) on the same random token batches, every token trained (next-token loss):

- peer: `AutoModelForCausalLM.from_pretrained(..., dtype=bf16, attn_implementation="sdpa")`,
  PEFT LoRA r=16 alpha=32 on all linear layers (QLoRA: bitsandbytes NF4 base), the model's own
  loss (`labels=`: full logits), torch AdamW (fused on CUDA), no activation checkpointing;
- ftexp: the config composed as `python -m ftexp task=pretrain ...` composes it, the task built
  from it as train.py builds it (TaskClass.from the registry, `configure_model`), its
  `training_step` (so its loss path: chunked by default) and the optimizer its builder makes.

Rows: LoRA bf16, QLoRA NF4 and full fine-tuning, each at every `--shapes` batch x sequence. Per
row: tokens/s over the timed steps (CUDA-synchronised), MFU, peak allocated memory, the ratios
ftexp / peer, and the losses of the first steps side by side (same weights and data: they agree
to bf16 rounding; they are the check that both sides train the same thing).

MFU = achieved model FLOPs / peak bf16 FLOPs of the GPU, with model FLOPs per step
    6 * N * tokens  +  6 * layers * hidden * seq * tokens   (causal attention: QK^T and AV,
                                                            forward + backward, half masked)
where N counts the parameters the matmuls use (all but the input embedding). As in the PaLM
convention, the 6N term counts the weight-gradient matmuls even where LoRA skips them (frozen
weights), so LoRA's MFU reads as the share of a full-training step's work.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

LLAMA_1B = {"model_type": "llama", "vocab_size": 128_256, "hidden_size": 2048, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192,
            "max_position_embeddings": 4096, "rope_theta": 500000.0, "tie_word_embeddings": True}
TINY = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
        "max_position_embeddings": 512}
# Dense bf16 peak FLOP/s by device name fragment (NVIDIA data sheets, SXM, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
ROWS = ("lora", "qlora", "full")
LEARNING_RATE = 1e-4


@dataclass
class Settings:
    device: str = "cuda"
    dtype: str = "bfloat16"
    arch: dict[str, Any] = field(default_factory=lambda: dict(LLAMA_1B))
    shapes: tuple[tuple[int, int], ...] = ((8, 2048), (8, 512))
    rows: tuple[str, ...] = ROWS
    warmup: int = 5
    steps: int = 20
    parity_steps: int = 3  # losses printed side by side
    peak_flops: float | None = None


def tiny_settings(steps: int = 2, warmup: int = 0, rows: tuple[str, ...] = ("lora", "full")) -> Settings:
    """The same code path on a tiny Llama on CPU in float32 (exact parity of the first loss)."""
    return Settings(device="cpu", dtype="float32", arch=dict(TINY), shapes=((2, 32),), rows=rows,
                    warmup=warmup, steps=steps, parity_steps=min(steps, 3))


# -- the two sides ---------------------------------------------------------------------------------

def _batches(settings: Settings, batch: int, seq: int, count: int) -> list[dict[str, Any]]:
    import torch

    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        ids = torch.randint(0, settings.arch["vocab_size"], (batch, seq), generator=generator)
        batch_ = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
        out.append({k: v.to(settings.device) for k, v in batch_.items()})
    return out


def _quant_config(row: str):
    if row != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def build_peer(settings: Settings, weights: Path, row: str):
    """(model, optimizer, step function) of plain transformers + PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, settings.dtype)
    quant = _quant_config(row)
    model = AutoModelForCausalLM.from_pretrained(
        weights, dtype=dtype, attn_implementation="sdpa", quantization_config=quant,
        **({"device_map": {"": settings.device}} if quant is not None else {}))
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if row != "full":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    model.to(settings.device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE,
                                  weight_decay=0.0, fused=settings.device == "cuda")

    def step(batch: dict[str, Any], index: int):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"], use_cache=False).loss

    return model, optimizer, step


def ftexp_overrides(settings: Settings, weights: Path, row: str) -> list[str]:
    adapter = (["adapter=none"] if row == "full" else
               ["adapter=lora", "adapter.r=16", "adapter.lora_alpha=32", "adapter.lora_dropout=0.0",
                "adapter.target_modules=all-linear"])
    precision = "bf16-true" if settings.dtype == "bfloat16" else "32"
    return ["task=pretrain", "model=tiny_llama", f"model.name_or_path={weights}", "model.random_init=null",
            f"model.dtype={settings.dtype}", "model.attn_implementation=sdpa", *adapter,
            *(["quant=4bit"] if row == "qlora" else []), f"optimizer.learning_rate={LEARNING_RATE}",
            "optimizer.weight_decay=0.0", f"trainer.precision={precision}",
            f"trainer.accelerator={'gpu' if settings.device == 'cuda' else 'cpu'}"]


def build_ftexp(settings: Settings, weights: Path, row: str, output_dir: Path):
    """(network, optimizer, step function) of ftexp: config composed and validated as the CLI
    does, the task built from it and stepped through its own training_step."""
    from hydra import compose, initialize_config_dir

    import ftexp.cli  # noqa: F401  (registers the ${ftexp_root:} resolver the config uses)
    from ftexp.builders.optim import build_optimizer
    from ftexp.config.validation import validate
    from ftexp.runs.paths import config_dir
    from ftexp.tasks.registry import get_task
    from ftexp.train import task_settings

    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="gpu_throughput"):
        cfg = compose("config", overrides=[*ftexp_overrides(settings, weights, row),
                                           f"paths.output_dir={output_dir}"])
    cfg = validate(cfg)
    task = get_task(cfg.task.name).task_class()(**task_settings(cfg))
    task.configure_model()
    task.to(settings.device).train()
    # The two Trainer attributes training_step reads (no logging is due at this interval).
    task._trainer = SimpleNamespace(log_every_n_steps=10**9, accumulate_grad_batches=1)
    optimizer = build_optimizer(task.network, task.hparams.optimizer, LEARNING_RATE,
                                fused=settings.device == "cuda")
    return task, optimizer, task.training_step


# -- measuring ---------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _model_flops(arch: dict[str, Any], parameters: int, batch: int, seq: int) -> float:
    tokens = batch * seq
    attention = 6 * arch["num_hidden_layers"] * arch["hidden_size"] * seq * tokens
    return 6 * parameters * tokens + attention


def _matmul_parameters(arch: dict[str, Any]) -> int:
    """Parameters of the dense model the matmuls use: everything but the input-embedding lookup
    (the LM head counts, tied or not). From the shape, so LoRA / NF4 do not change it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**arch)
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return total - embedding + (embedding if tied else 0)


def measure(settings: Settings, side: str, weights: Path, row: str, batch: int, seq: int,
            output_dir: Path) -> dict[str, Any]:
    import torch

    gc.collect()
    if settings.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    if side == "peer":
        module, optimizer, step = build_peer(settings, weights, row)
    else:
        module, optimizer, step = build_ftexp(settings, weights, row, output_dir)
    data = _batches(settings, batch, seq, max(settings.parity_steps, 1))
    losses, times = [], []
    for i in range(settings.warmup + settings.steps):
        _sync(settings.device)
        start = time.perf_counter()
        loss = step(data[i % len(data)], i)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(settings.device)
        if i >= settings.warmup:
            times.append(time.perf_counter() - start)
        if len(losses) < settings.parity_steps:
            losses.append(loss.detach().item())
    peak = torch.cuda.max_memory_allocated() / 2**30 if settings.device == "cuda" else None
    loss_path = getattr(module, "loss_path", None)
    del module, optimizer
    seconds = sum(times)
    return {"tokens_per_s": batch * seq * len(times) / seconds if seconds else float("nan"),
            "step_s": seconds / max(len(times), 1), "peak_gib": peak, "losses": losses,
            "loss_path": loss_path.describe() if loss_path is not None else "transformers (full logits)"}


def run(settings: Settings) -> list[dict[str, Any]]:
    """One row per (fine-tuning kind, shape): both sides measured, ratios, losses side by side."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    peak_flops = settings.peak_flops
    if peak_flops is None and settings.device == "cuda":
        name = torch.cuda.get_device_name()
        peak_flops = next((v for k, v in PEAK_BF16.items() if k in name), None)
    parameters = _matmul_parameters(settings.arch)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings.arch),
                                                 dtype=getattr(torch, settings.dtype))
        model.save_pretrained(weights)  # safetensors: both sides load the same weights
        del model
        for row in settings.rows:
            for batch, seq in settings.shapes:
                peer = measure(settings, "peer", weights, row, batch, seq, Path(tmp) / "run")
                ours = measure(settings, "ftexp", weights, row, batch, seq, Path(tmp) / "run")
                flops = _model_flops(settings.arch, parameters, batch, seq)
                result = {"row": row, "batch": batch, "seq": seq, "steps": settings.steps,
                          "hf_losses": peer["losses"], "ftexp_losses": ours["losses"],
                          "ftexp_loss_path": ours["loss_path"]}
                for name, side in (("hf", peer), ("ftexp", ours)):
                    result[f"{name}_tokens_per_s"] = side["tokens_per_s"]
                    result[f"{name}_peak_gib"] = side["peak_gib"]
                    result[f"{name}_mfu"] = (flops / side["step_s"] / peak_flops
                                             if peak_flops and side["step_s"] else None)
                result["speedup"] = ours["tokens_per_s"] / peer["tokens_per_s"]
                result["memory_ratio"] = (peer["peak_gib"] / ours["peak_gib"]
                                          if peer["peak_gib"] and ours["peak_gib"] else None)
                rows.append(result)
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]], settings: Settings) -> None:
    print(f"Llama {settings.arch['num_hidden_layers']} layers, hidden {settings.arch['hidden_size']}, "
          f"vocab {settings.arch['vocab_size']:,}; {settings.dtype}, {settings.device}; "
          f"{settings.warmup} warm-up + {settings.steps} timed steps")
    print(f"{'row':<7}{'shape':>10}{'HF tok/s':>11}{'ftexp tok/s':>13}{'x':>6}{'HF MFU':>8}{'ftexp MFU':>10}"
          f"{'HF GiB':>8}{'ftexp GiB':>10}{'mem x':>7}")
    for r in rows:
        shape = f"{r['batch']}x{r['seq']}"
        print(f"{r['row']:<7}{shape:>10}{r['hf_tokens_per_s']:>11,.0f}"
              f"{r['ftexp_tokens_per_s']:>13,.0f}{r['speedup']:>6.2f}{_fmt(r['hf_mfu'], '.1%'):>8}"
              f"{_fmt(r['ftexp_mfu'], '.1%'):>10}{_fmt(r['hf_peak_gib'], '.1f'):>8}"
              f"{_fmt(r['ftexp_peak_gib'], '.1f'):>10}{_fmt(r['memory_ratio'], '.2f'):>7}")
    print("\nloss parity over the first steps (peer | ftexp):")
    for r in rows:
        pairs = "  ".join(f"{a:.4f}|{b:.4f}" for a, b in zip(r["hf_losses"], r["ftexp_losses"], strict=False))
        print(f"  {r['row']:<6}{r['batch']}x{r['seq']:<6} {pairs}   "
              f"(ftexp loss path: {r['ftexp_loss_path']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide Llama (checks the code path)")
    parser.add_argument("--dry-run", action="store_true", help="= --device cpu --tiny --steps 2 --warmup 0")
    parser.add_argument("--rows", default=None, help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--shapes", default=None, help="batch x seq list, e.g. 8x2048,8x512")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak bf16 TFLOP/s, if not a known GPU")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.dry_run or args.tiny or args.device == "cpu":
        settings = tiny_settings(steps=2, warmup=0) if (args.dry_run or args.tiny) else Settings(device="cpu")
        settings = replace(settings, device=args.device if not args.dry_run else "cpu")
        if settings.device == "cpu":
            settings = replace(settings, rows=tuple(r for r in settings.rows if r != "qlora"))
    else:
        settings = Settings()
    if args.rows:
        settings = replace(settings, rows=tuple(args.rows.split(",")))
    if args.shapes:
        shapes = tuple(tuple(int(x) for x in s.split("x")) for s in args.shapes.split(","))
        settings = replace(settings, shapes=shapes)
    if args.warmup is not None:
        settings = replace(settings, warmup=args.warmup)
    if args.steps is not None:
        settings = replace(settings, steps=args.steps, parity_steps=min(args.steps, 3))
    if args.peak_tflops:
        settings = replace(settings, peak_flops=args.peak_tflops * 1e12)
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_throughput: needs a CUDA GPU (--dry-run checks the code path on CPU)")
    rows = run(settings)
    print_table(rows, settings)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

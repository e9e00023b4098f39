"""Peak memory and step time of one causal-LM training step: full logits vs the chunked loss.

    python benchmarks/lm_memory.py [--chunk 1024 --batch 2 --seq 2048 --steps 2]

A random-init Llama with a Llama-3 vocabulary (128,256 tokens), 2 layers, hidden 256, trained
through ftexp's own causal-LM task (`task=pretrain`, built from the composed config as a run
builds it): forward, backward and an AdamW step on a batch of 2 x 2,048 tokens, once with
`model.loss_chunk_tokens=null` (the full (batch, seq, vocab) logits, widened to float32) and once
with the chunked loss. Each runs in its own process, so each peak RSS
(`resource.getrusage(...).ru_maxrss`) is its own; the child saves its first step's loss and
gradients and this process compares them. Prints the peak-memory ratio (full / chunked) first,
then a table. CPU, float32.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB, HIDDEN, LAYERS = 128_256, 256, 2


def overrides(chunk: int | None) -> list[str]:
    arch = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
            "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 4 * HIDDEN,
            "max_position_embeddings": 4096}
    return ["task=pretrain", "model=tiny_llama", "trainer.precision=32", "trainer.accelerator=cpu",
            *(f"model.random_init.{k}={v}" for k, v in arch.items()),
            f"model.loss_chunk_tokens={'null' if chunk is None else chunk}"]


def child(chunk: int | None, batch: int, seq: int, steps: int, out: Path) -> None:
    """One configuration: build the task as a run does, train `steps` steps, write the figures."""
    import torch
    from hydra import compose, initialize_config_dir

    import ftexp.cli  # noqa: F401  (registers the ${ftexp_root:} resolver the config uses)
    from ftexp.config.validation import validate
    from ftexp.runs.paths import config_dir
    from ftexp.tasks.registry import get_task
    from ftexp.train import task_settings

    torch.manual_seed(0)
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="bench"):
        cfg = validate(compose("config", overrides=[*overrides(chunk), f"paths.output_dir={out.parent}"]))
    task = get_task(cfg.task.name).task_class()(**task_settings(cfg))
    task.configure_model()
    network = task.network
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=generator)
    data = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, losses = [], []
    for step in range(steps):
        start = time.perf_counter()
        total, count = task._sum_and_count(data)  # the loss training_step backpropagates
        loss = total / count
        loss.backward()
        if step == 0:  # saved outside the timed part, before the update changes them
            elapsed = time.perf_counter() - start
            torch.save({n: p.grad for n, p in network.named_parameters()}, out.with_suffix(".grads"))
            start = time.perf_counter() - elapsed
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    out.write_text(json.dumps({
        "path": task.loss_path.describe(), "loss": losses[0], "step_s": times,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "before_step_mib": before / 1024}))


def measure(chunk: int | None, args: argparse.Namespace, folder: Path) -> dict:
    out = folder / f"{'full' if chunk is None else chunk}.json"
    command = [sys.executable, __file__, "--child", "null" if chunk is None else str(chunk),
               "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
               "--out", str(out)]
    subprocess.run(command, check=True)
    return json.loads(out.read_text()) | {"grads": out.with_suffix(".grads")}


def agreement(full: dict, chunked: dict) -> tuple[float, float]:
    """(relative loss difference, largest gradient difference relative to the tensor's largest entry)."""
    import torch

    a, b = torch.load(full["grads"]), torch.load(chunked["grads"])
    worst = max(float((a[n] - b[n]).abs().max() / a[n].abs().max().clamp(min=1e-30)) for n in a)
    return abs(chunked["loss"] - full["loss"]) / abs(full["loss"]), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=int, default=1024, help="model.loss_chunk_tokens of the new path")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=2,
                        help="steps per configuration; the fastest is reported")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(None if args.child == "null" else int(args.child), args.batch, args.seq, args.steps, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        full = measure(None, args, Path(tmp))
        chunked = measure(args.chunk, args, Path(tmp))
        loss_rel, grad_rel = agreement(full, chunked)
    print(f"{full['peak_rss_mib'] / chunked['peak_rss_mib']:.2f}x lower peak RSS with the chunked loss "
          f"(full logits / chunked({args.chunk}))")
    print(f"\nLlama, vocab {VOCAB:,}, {LAYERS} layers, hidden {HIDDEN}, batch {args.batch} x {args.seq}, "
          f"fp32 CPU, forward + backward + AdamW")
    print(f"{'loss path':<16}{'peak RSS MiB':>14}{'step peak MiB':>15}{'step s':>9}{'loss':>11}")
    for row in (full, chunked):
        step_peak = row["peak_rss_mib"] - row["before_step_mib"]
        print(f"{row['path']:<16}{row['peak_rss_mib']:>14,.0f}{step_peak:>15,.0f}"
              f"{min(row['step_s']):>9.2f}{row['loss']:>11.6f}")
    print(f"\nstep time ratio (chunked / full): {min(chunked['step_s']) / min(full['step_s']):.2f}")
    print(f"loss agreement: rel {loss_rel:.1e}; gradients: max |diff| / max |grad| per tensor {grad_rel:.1e}")


if __name__ == "__main__":
    main()

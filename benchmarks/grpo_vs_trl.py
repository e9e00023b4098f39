"""ftexp's GRPO against TRL's `GRPOTrainer` on the same small job, on this CPU.

One GRPO job, run by each framework in its own process (one after the other, never
overlapping). The job: the random-init Llama of benchmarks/dpo_vs_trl.py (4 layers, 256 wide,
4 heads, 2 KV heads, MLP 688; MiniLM's vocabulary and tokenizer; built with seed 0 as ftexp
builds random-init models, so both start from the same weights), LoRA r=8 / alpha 16 / dropout
0.05 on q_proj, k_proj, v_proj, o_proj, the train split of data/grpo/arithmetic_prompts.jsonl
as plain-text prompts (no chat template, no special tokens: the TRL side drops the BERT
tokenizer's [CLS] / [SEP], as dpo_vs_trl does), 4 prompts per optimizer step with 4 sampled
completions each (TRL: per_device_train_batch_size = generation_batch_size = 16 completions, so
one generation per optimizer step and no "old" log-prob pass), at most 8 new tokens, temperature
1.0, no top-k / top-p filtering, beta 0 (no reference pass), loss_type grpo (TRL 1.x defaults to
dapo: set explicitly), scale_rewards group, AdamW at lr 5e-4, linear decay without warm-up, no
weight decay, gradient clipping at 1.0, dropout off in the policy, fp32, 10 optimizer steps, no
evaluation, no checkpoint, no gradient checkpointing. The reward, the same on both sides: the
share of the completion's whitespace-separated words that are numbers (`[0-9]+`), 0 for an empty
completion — ftexp.tasks.rewards.token_share(pattern='[0-9]+', unit='word') on the ftexp side
(+experiment=tiny_grpo_toy's reward) and the same three lines as a plain function on the TRL
side (ftexp is not installed in the TRL venv).

For each side: optimizer steps, seconds of training (ftexp: `fit_seconds` from metrics.json;
TRL: `trainer.train()`), seconds of the whole process and its CPU seconds (user + system),
completions (samples) per second of training and optimizer steps per second, and the process's
peak RSS (its own `ru_maxrss`). Ratios: ftexp / TRL throughput (goal ≥ 1.00x) and TRL / ftexp
peak RSS (goal ≥ 1.00x, i.e. ftexp uses no more memory).

    .venv/bin/python benchmarks/grpo_vs_trl.py                 # or: make bench-grpo
    .venv/bin/python benchmarks/grpo_vs_trl.py --repeats 3

TRL comes from `.venv-bench-trl/`, created on first use by peers.ensure_trl_venv (TRL
1.16.0 with exactly .venv's torch, transformers, peft and accelerate); the measuring helpers are
dpo_vs_trl's too.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers, also when imported

from peers import (  # noqa: E402
    ARCH,
    FTEXP_TRAINING_ONLY,
    LORA,
    ROOT,
    child_env,
    comparison_main,
    ensure_trl_venv,
    failed,
    ftexp_lora_overrides,
    ftexp_model_overrides,
    run_process,
    run_trl_child,
    tokenizer_dir,
    trl_tokenizer_and_model,
)

DATA = ROOT / "data" / "grpo" / "arithmetic_prompts.jsonl"
LEARNING_RATE = 5e-4
NUM_GENERATIONS, MAX_COMPLETION_LENGTH, TEMPERATURE = 4, 8, 1.0
NUMBER = r"[0-9]+"


def number_share(prompts, completions, **columns):
    """ftexp.tasks.rewards.token_share(pattern='[0-9]+', unit='word'), for the TRL side."""
    pattern = re.compile(NUMBER)
    return [sum(pattern.fullmatch(w) is not None for w in c.split()) / len(c.split()) if c.split() else 0.0
            for c in completions]


# ---- ftexp side: the CLI, one process --------------------------------------------------------------

def ftexp_overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    return [
        "+experiment=tiny_grpo_toy", f"data.path={DATA}", f"data.batch_size={args.prompts}",
        *ftexp_model_overrides(), *ftexp_lora_overrides(),
        f"task.num_generations={NUM_GENERATIONS}", "task.loss_type=grpo", "task.scale_rewards=group",
        "task.beta=0.0", f"task.max_completion_length={MAX_COMPLETION_LENGTH}", "task.sample_generations=0",
        f"generation.max_new_tokens={MAX_COMPLETION_LENGTH}", f"generation.temperature={TEMPERATURE}",
        "generation.top_k=0", "generation.top_p=1.0",
        f"optimizer.learning_rate={LEARNING_RATE}", "optimizer.weight_decay=0.0",
        "scheduler=linear", "scheduler.warmup_steps=0", "scheduler.warmup_fraction=0.0",
        f"trainer.max_steps={args.steps}", *FTEXP_TRAINING_ONLY, f"paths.output_dir={run_dir}",
    ]


def ftexp_side(out: Path, args: argparse.Namespace) -> dict:
    """ftexp: `python -m ftexp +experiment=tiny_grpo_toy adapter=lora …`; figures from its
    metrics.json and from the process."""
    run_dir = out / "ftexp-run"
    log = out / "ftexp.log"
    wall, cpu, rss, rc = run_process([sys.executable, "-m", "ftexp", *ftexp_overrides(args, run_dir)],
                                     log, child_env(args.threads, out / "ftexp-cache"))
    if rc != 0:
        raise failed("the ftexp side", log)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps = int(metrics["global_steps"])
    shutil.rmtree(run_dir, ignore_errors=True)  # keep the log, drop the run's files
    return {"steps": steps, "train_s": float(metrics["fit_seconds"]), "process_s": wall, "cpu_s": cpu,
            "samples": steps * args.prompts * NUM_GENERATIONS, "rss_mib": rss,
            "reward": metrics.get("train/reward")}


# ---- TRL side: GRPOTrainer in the TRL venv, one process --------------------------------------------

def trl_side(python: Path, out: Path, args: argparse.Namespace) -> dict:
    """TRL: this file run by the TRL venv's python with --trl-child (see trl_child)."""
    spec = {"tokenizer": tokenizer_dir(), "steps": args.steps, "prompts": args.prompts,
            "output_dir": str(out / "trl-run"), "result": str(out / "trl-result.json")}
    return run_trl_child(python, __file__, spec, out, args.threads)


def trl_child(spec: dict) -> None:
    """Runs in the TRL venv: build the model, train with GRPOTrainer, write the figures."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    tokenizer, model = trl_tokenizer_and_model(spec["tokenizer"])
    rows = [{"prompt": r["prompt"], "answer": r["answer"]}
            for r in map(json.loads, DATA.read_text().splitlines()) if r.get("split") == "train"]
    completions = spec["prompts"] * NUM_GENERATIONS
    counted = {"completion_tokens": 0, "rewards": []}

    def numbers(prompts, completions, completion_ids=None, **columns):
        counted["completion_tokens"] += sum(len(c) for c in completion_ids or [])
        scores = number_share(prompts, completions)
        counted["rewards"].extend(scores)
        return scores

    training = GRPOConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=completions,
        generation_batch_size=completions, num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_COMPLETION_LENGTH, temperature=TEMPERATURE, top_k=0, top_p=1.0,
        beta=0.0, loss_type="grpo", scale_rewards="group", max_steps=spec["steps"],
        learning_rate=LEARNING_RATE, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, bf16=False, fp16=False, gradient_checkpointing=False, disable_dropout=True,
        eval_strategy="no", save_strategy="no", report_to="none", log_completions=False, disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0, seed=42)
    trainer = GRPOTrainer(model=model, reward_funcs=numbers, args=training, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(rows),
                          peft_config=LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA))
    started = time.perf_counter()
    output = trainer.train()
    train_s = time.perf_counter() - started
    steps = trainer.state.global_step
    Path(spec["result"]).write_text(json.dumps({
        "steps": steps, "train_s": train_s, "samples": len(counted["rewards"]),
        "completion_tokens": counted["completion_tokens"], "loss": output.training_loss,
        "reward": sum(counted["rewards"]) / max(1, len(counted["rewards"])),
        "self_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads()}))


# -- main -------------------------------------------------------------------------------------------

def compare(out: Path, args: argparse.Namespace) -> None:
    python = ensure_trl_venv()
    runs: dict[str, list[dict]] = {"ftexp": [], "TRL": []}
    for _ in range(args.repeats):  # alternate, so that drift in the machine's speed hits both
        if not args.trl_only:
            runs["ftexp"].append(ftexp_side(out, args))
        runs["TRL"].append(trl_side(python, out, args))
    trl_version = subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"],
                                 capture_output=True, text=True).stdout.strip()

    print(f"\nGRPO, LoRA r={LORA['r']} on {'/'.join(LORA['target_modules'])}, random-init Llama "
          f"({ARCH['num_hidden_layers']} layers × {ARCH['hidden_size']}), {args.prompts} prompts × "
          f"{NUM_GENERATIONS} completions per step, ≤ {MAX_COMPLETION_LENGTH} new tokens, beta 0, "
          f"loss grpo, {args.steps} steps, fp32, {args.threads} threads; TRL {trl_version}; "
          f"{args.repeats} run(s) per side, ratios from the fastest\n")
    print("| side | optimizer steps | train s | process s | process CPU s | completions | completions/s "
          "| steps/s | peak RSS MiB | train reward* |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    best = {}
    for side, results in runs.items():
        if not results:
            continue
        for r in results:
            r["sps"], r["stps"] = r["samples"] / r["train_s"], r["steps"] / r["train_s"]
        best[side] = {**max(results, key=lambda r: r["sps"]), "rss_mib": max(r["rss_mib"] for r in results)}
        for i, r in enumerate(results):
            reward = f"{r['reward']:.3f}" if isinstance(r.get("reward"), (int, float)) else "–"
            name = side if len(results) == 1 else f"{side} ({i + 1})"
            print(f"| {name} | {r['steps']} | {r['train_s']:.2f} | {r['process_s']:.1f} | {r['cpu_s']:.1f} | "
                  f"{r['samples']} | {r['sps']:.2f} | {r['stps']:.3f} | {r['rss_mib']:.0f} | {reward} |")
    print("\n* ftexp: train/reward as its metrics.json has it (the last logged step's mean); TRL: the mean "
          "over every scored completion. Both sample from different random streams: not comparable run "
          "for run.")
    if "completion_tokens" in best["TRL"]:
        t = best["TRL"]
        print(f"\nTRL sampled {t['completion_tokens']} completion tokens "
              f"({t['completion_tokens'] / max(1, t['samples']):.2f} per completion, at most "
              f"{MAX_COMPLETION_LENGTH})")
    if len(best) == 2:
        f, t = best["ftexp"], best["TRL"]
        print(f"\nftexp / TRL completions/s: {f['sps'] / t['sps']:.2f}x, "
              f"steps/s: {f['stps'] / t['stps']:.2f}x "
              f"(goal ≥ 1.00x); TRL / ftexp peak RSS: {t['rss_mib'] / f['rss_mib']:.2f}x (goal ≥ 1.00x); "
              f"whole process, TRL / ftexp: wall {t['process_s'] / f['process_s']:.2f}x, "
              f"CPU {t['cpu_s'] / f['cpu_s']:.2f}x")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per optimizer step")


def main() -> None:
    comparison_main(__doc__, trl_child, add_arguments, compare, "ftexp-grpo-bench-")


if __name__ == "__main__":
    main()

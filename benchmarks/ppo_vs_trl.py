"""ftexp's PPO against TRL's `PPOTrainer` on the same small job, on this CPU.

One PPO job, run by each framework in its own process (one after the other, never overlapping).
The policy: the random-init Llama of benchmarks/dpo_vs_trl.py (4 layers, 256 wide, 4 heads, 2
KV heads, MLP 688; MiniLM's vocabulary and tokenizer; built with seed 0 as ftexp builds
random-init models, so both start from the same weights), LoRA r=8 / alpha 16 / dropout 0.05 on
q_proj, k_proj, v_proj, o_proj; the reference: the policy with its adapter disabled. The reward
model and the critic: one reward model, made before either side runs (not timed) — a
`task=reward` run of the same architecture, trained in full for a few steps on the evaluation
demo's colour preferences, and its export (AutoModelForSequenceClassification). ftexp scores with
`ftexp.tasks.rewards.reward_model(run=…)` and starts its critic from the run
(`task.critic=separate`); TRL scores with the export and starts its value model from it, as its
PPO examples do. Both critics are trained in full with the policy's adapter.

The rollouts: the train split of data/grpo/arithmetic_prompts.jsonl as plain-text prompts (no
chat template, no special tokens), 8 prompts per rollout, one completion each, at most 8 new
tokens, ended at EOS (TRL: stop_token=eos), temperature 1.0, no top-k / top-p filtering. Then 2
PPO epochs per rollout, each one optimizer step on the whole rollout (TRL: num_ppo_epochs=2,
num_mini_batches=1, no gradient accumulation), with the per-token KL penalty 0.05 (k1), gamma 1,
lam 0.95, cliprange 0.2, cliprange_value 0.2, vf_coef 0.1, no reward whitening; AdamW at lr 3e-4,
constant, no weight decay, no gradient clipping (TRL's PPO clips none), dropout off, fp32,
10 rollouts (20 optimizer steps), no evaluation, no checkpoint.

For each side: rollouts, optimizer steps, seconds of training (ftexp: `fit_seconds` from
metrics.json; TRL: `trainer.train()`), seconds of the whole process and its CPU seconds, rollout
completions per second of training, and the process's peak RSS. Ratios: ftexp / TRL completions
per second (goal ≥ 1.00x) and TRL / ftexp peak RSS (goal ≥ 1.00x: ftexp uses no more memory).

    .venv/bin/python benchmarks/ppo_vs_trl.py                  # or: make bench-ppo
    .venv/bin/python benchmarks/ppo_vs_trl.py --repeats 3

TRL comes from `.venv-bench-trl-1.12.0/`, created on first use by peers.ensure_trl_venv: TRL
1.12.0 is its last release with a PPOTrainer (trl.experimental.ppo; 1.13 removed it), with
exactly .venv's torch, transformers, peft and accelerate.
"""

from __future__ import annotations

import argparse
import json
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
    TRL_PPO_VERSION,
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
REWARD_DATA = ROOT / "data" / "eval_demo" / "colour_prefs.jsonl"
LEARNING_RATE = 3e-4
PPO_EPOCHS, MAX_COMPLETION_LENGTH, TEMPERATURE, KL_COEF = 2, 8, 1.0, 0.05
# TRL's PPO clips no gradients: neither side does.
TRAINING_ONLY = [o for o in FTEXP_TRAINING_ONLY if not o.startswith("trainer.gradient_clip_val=")]


# ---- the reward model both sides use (made once, not timed) ---------------------------------------

def reward_model(out: Path, threads: int) -> tuple[Path, Path]:
    """(the task=reward run, its AutoModelForSequenceClassification export)."""
    run, export = out / "reward-run", out / "reward-export"
    if not (export / "config.json").is_file():
        log = out / "reward.log"
        train = [sys.executable, "-m", "ftexp", "task=reward", *ftexp_model_overrides(), "adapter=none",
                 f"data.path={REWARD_DATA}", "data.split_column=split", "data.max_length=32",
                 "data.max_prompt_length=24", "data.batch_size=16", "trainer.max_steps=5",
                 "trainer.precision=32", "trainer.enable_progress_bar=false", "logger=none",
                 f"hydra.run.dir={run}"]
        env = child_env(threads, out / "ftexp-cache")
        for command in (train, [sys.executable, "-m", "ftexp.export", str(run), "-o", str(export),
                                "--dtype", "float32"]):
            if run_process(command, log, env)[3] != 0:
                raise failed("making the reward model", log)
    return run, export


# ---- ftexp side: the CLI, one process --------------------------------------------------------------

def ftexp_overrides(args: argparse.Namespace, reward_run: Path, run_dir: Path) -> list[str]:
    return [
        "+experiment=tiny_ppo", f"data.path={DATA}", f"data.batch_size={args.prompts}",
        *ftexp_model_overrides(), *ftexp_lora_overrides(),
        "~task.rewards.numbers", "+task.rewards.rm._target_=ftexp.tasks.rewards.reward_model",
        f"+task.rewards.rm.run={reward_run}", "task.critic=separate", f"task.critic_from={reward_run}",
        "task.num_generations=1", f"task.num_iterations={PPO_EPOCHS}", f"task.kl_coef={KL_COEF}",
        "task.gamma=1.0", "task.lam=0.95", "task.cliprange=0.2", "task.cliprange_value=0.2",
        "task.vf_coef=0.1", "task.whiten_rewards=false",
        f"task.max_completion_length={MAX_COMPLETION_LENGTH}", "task.sample_generations=0",
        f"generation.max_new_tokens={MAX_COMPLETION_LENGTH}", f"generation.temperature={TEMPERATURE}",
        "generation.top_k=0", "generation.top_p=1.0",
        f"optimizer.learning_rate={LEARNING_RATE}", "optimizer.weight_decay=0.0", "scheduler=constant",
        f"trainer.max_steps={args.rollouts * PPO_EPOCHS}", *TRAINING_ONLY, "trainer.gradient_clip_val=null",
        f"paths.output_dir={run_dir}",
    ]


def ftexp_side(out: Path, args: argparse.Namespace, reward_run: Path) -> dict:
    """ftexp: `python -m ftexp +experiment=tiny_ppo …`; figures from its metrics.json and the process."""
    run_dir = out / "ftexp-run"
    log = out / "ftexp.log"
    command = [sys.executable, "-m", "ftexp", *ftexp_overrides(args, reward_run, run_dir)]
    wall, cpu, rss, rc = run_process(command, log, child_env(args.threads, out / "ftexp-cache"))
    if rc != 0:
        raise failed("the ftexp side", log)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps = int(metrics["global_steps"])
    shutil.rmtree(run_dir, ignore_errors=True)  # keep the log, drop the run's files
    return {"steps": steps, "rollouts": steps // PPO_EPOCHS, "train_s": float(metrics["fit_seconds"]),
            "process_s": wall, "cpu_s": cpu, "samples": steps // PPO_EPOCHS * args.prompts, "rss_mib": rss}


# ---- TRL side: PPOTrainer in its venv, one process -------------------------------------------------

def trl_side(python: Path, out: Path, args: argparse.Namespace, reward_export: Path) -> dict:
    """TRL: this file run by the TRL venv's python with --trl-child (see trl_child)."""
    spec = {"tokenizer": tokenizer_dir(), "rollouts": args.rollouts, "prompts": args.prompts,
            "reward_model": str(reward_export), "output_dir": str(out / "trl-run"),
            "result": str(out / "trl-result.json")}
    return run_trl_child(python, __file__, spec, out, args.threads)


def trl_child(spec: dict) -> None:
    """Runs in the TRL venv: build the models, train with PPOTrainer, write the figures."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer, policy = trl_tokenizer_and_model(spec["tokenizer"])
    tokenizer.padding_side = "left"  # PPOTrainer generates from left-padded queries
    rows = map(json.loads, DATA.read_text().splitlines())
    prompts = [r["prompt"] for r in rows if r.get("split") == "train"]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})

    def scorer():
        return AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1,
                                                                  dtype=torch.float32)

    training = PPOConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["prompts"],
        gradient_accumulation_steps=1, num_mini_batches=1, num_ppo_epochs=PPO_EPOCHS,
        total_episodes=spec["rollouts"] * spec["prompts"], local_rollout_forward_batch_size=spec["prompts"],
        response_length=MAX_COMPLETION_LENGTH, stop_token="eos", temperature=TEMPERATURE, kl_coef=KL_COEF,
        kl_estimator="k1", gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
        whiten_rewards=False, num_sample_generations=0, learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant", weight_decay=0.0, bf16=False, fp16=False, gradient_checkpointing=False,
        eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, seed=42, logging_steps=1)
    trainer = PPOTrainer(args=training, processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=scorer(), value_model=scorer(), train_dataset=dataset,
                         eval_dataset=dataset,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA))
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    rollouts = trainer.state.global_step
    Path(spec["result"]).write_text(json.dumps({
        "rollouts": rollouts, "steps": rollouts * PPO_EPOCHS, "train_s": train_s,
        "samples": rollouts * spec["prompts"],
        "self_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads()}))


# -- main -------------------------------------------------------------------------------------------

def compare(out: Path, args: argparse.Namespace) -> None:
    python = ensure_trl_venv(TRL_PPO_VERSION)
    reward_run, reward_export = reward_model(out, args.threads)
    runs: dict[str, list[dict]] = {"ftexp": [], "TRL": []}
    for _ in range(args.repeats):  # alternate, so that drift in the machine's speed hits both
        if not args.trl_only:
            runs["ftexp"].append(ftexp_side(out, args, reward_run))
        runs["TRL"].append(trl_side(python, out, args, reward_export))
    trl_version = subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"],
                                 capture_output=True, text=True).stdout.strip()

    print(f"\nPPO, LoRA r={LORA['r']} on {'/'.join(LORA['target_modules'])}, random-init Llama "
          f"({ARCH['num_hidden_layers']} layers × {ARCH['hidden_size']}), a separate critic and a reward "
          f"model of the same size, {args.prompts} prompts × 1 completion per rollout, "
          f"≤ {MAX_COMPLETION_LENGTH} new tokens, {PPO_EPOCHS} PPO epochs, {args.rollouts} rollouts, fp32, "
          f"{args.threads} threads; TRL {trl_version}; {args.repeats} run(s) per side, "
          "ratios from the fastest\n")
    print("| side | rollouts | optimizer steps | train s | process s | process CPU s | completions/s "
          "| peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    best = {}
    for side, results in runs.items():
        if not results:
            continue
        for r in results:
            r["sps"] = r["samples"] / r["train_s"]
        best[side] = {**max(results, key=lambda r: r["sps"]), "rss_mib": max(r["rss_mib"] for r in results),
                      "process_s": min(r["process_s"] for r in results)}
        for i, r in enumerate(results):
            name = side if len(results) == 1 else f"{side} ({i + 1})"
            print(f"| {name} | {r['rollouts']} | {r['steps']} | {r['train_s']:.2f} | {r['process_s']:.1f} | "
                  f"{r['cpu_s']:.1f} | {r['sps']:.2f} | {r['rss_mib']:.0f} |")
    if len(best) == 2:
        f, t = best["ftexp"], best["TRL"]
        print(f"\nftexp / TRL completions/s: {f['sps'] / t['sps']:.2f}x (goal ≥ 1.00x); "
              f"TRL / ftexp peak RSS: {t['rss_mib'] / f['rss_mib']:.2f}x (goal ≥ 1.00x); "
              f"whole process, TRL / ftexp: wall {t['process_s'] / f['process_s']:.2f}x")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rollouts", type=int, default=10, help="rollouts per run")
    parser.add_argument("--prompts", type=int, default=8, help="prompts (completions) per rollout")


def main() -> None:
    comparison_main(__doc__, trl_child, add_arguments, compare, "ftexp-ppo-bench-")


if __name__ == "__main__":
    main()

"""ftexp's DPO against TRL's `DPOTrainer` on the same small job, on this CPU; and what
`task.reference=precompute` saves in a beta sweep.

Part 1, `compare`: one DPO job, run by each framework in its own process (one after the other,
never overlapping). The job: a random-init Llama (4 layers, 256 wide, 4 heads, 2 KV heads, MLP
688; vocabulary and tokenizer: MiniLM's, as `model=tiny_llama` has; built with seed 0 as ftexp
builds random-init models, so both start from the same weights), LoRA r=8 / alpha 16 / dropout
0.05 on q_proj, k_proj, v_proj, o_proj, the sigmoid DPO loss with beta 0.1, AdamW at lr 5e-4,
linear decay without warm-up, no weight decay, gradient clipping at 1.0, fp32, batch 4, 15
optimizer steps (one epoch of the 60 pairs), no evaluation, no checkpoint, no gradient
checkpointing, dropout off in the policy (both defaults: TRL's `disable_dropout`, ftexp's
`task.disable_dropout`). Data: `data/preference/dpo_en_demo_sample.json` turned into TRL's
"standard" format (prompt / chosen / rejected text,
no chat template on either side): the prompt is the conversation's turns joined by newlines
and ending in one, each response ends in EOS ([SEP]: MiniLM's vocabulary has no EOS; ftexp
uses its SEP, and so does the TRL side here). The texts are cut beforehand, at word boundaries,
so that every prompt fits in 128 tokens and every prompt + response + EOS in 256: neither side
truncates anything, so both train on exactly the same tokens (TRL 1.x has no
`max_prompt_length`, only `max_length`).

For each side: optimizer steps, seconds of training (ftexp: `fit_seconds` from metrics.json;
TRL: `trainer.train()`), seconds of the whole process (imports, model build, data preparation
included) and its CPU seconds (user + system: less sensitive than wall time to whatever else
the machine runs), real (non-padding) tokens through the policy forward — per pair, prompt +
chosen + prompt + rejected — per second of training, and the process's peak RSS (its own
`ru_maxrss`, read with `os.wait4` when it ends). Ratios: ftexp / TRL tokens per second (goal
≥ 1.00x) and TRL / ftexp peak RSS (goal ≥ 1.00x, i.e. ftexp uses no more memory). The TRL side
also checks that TRL tokenized the pairs into exactly the tokens counted here (a warning if
not). On 2 CPU cores each side takes about 2 minutes.

Part 2, `sweep`: the same job with full fine-tuning (`adapter=none`), as a 4-trial Hydra
multirun over `task.beta=0.05,0.1,0.2,0.5`, once with `task.reference=precompute` (the
reference log-probs computed once, before the first trial trains, and read from the
content-addressed cache by the later trials) and once with `task.reference=copy` (a frozen copy
of the starting weights runs a reference forward on every step). Each sweep starts with an
empty cache (its own FTEXP_CACHE_DIR). Prints each sweep's wall time, their ratio and the
`reference_forward_passes` each trial's metrics.json reports. About 25 minutes on 2 CPU cores.

    .venv/bin/python benchmarks/dpo_vs_trl.py                  # both parts (or: make bench-dpo)
    .venv/bin/python benchmarks/dpo_vs_trl.py --part compare --repeats 3
    .venv/bin/python benchmarks/dpo_vs_trl.py --part sweep

How TRL is installed: not as a dependency of ftexp. On first use the script creates
`.venv-bench-trl/` in the repository root (git-ignored) with this interpreter's `venv` module
and pip-installs into it `trl==1.16.0` together with exactly the torch, transformers, peft and
accelerate versions that `.venv` has (torch as `torch==<version>`, which takes the local CPU
build where there is one; set TORCH_SPEC, as for `make install`, to choose another build). A
marker file records the pins; when `.venv`'s versions change the venv is rebuilt. A separate
venv, rather than `pip install --target` onto PYTHONPATH, so that TRL's own dependencies
(datasets, …) can never shadow or upgrade what `.venv` has.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers, also when imported
from peers import (  # noqa: E402
    ARCH,
    FTEXP_TRAINING_ONLY,
    LORA,
    ROOT,
    add_side_arguments,
    child_env,
    ensure_eos,
    ensure_trl_venv,
    failed,
    ftexp_lora_overrides,
    ftexp_model_overrides,
    run_process,
    run_trl_child,
    tokenizer_dir,
    trl_child_requested,
    trl_tokenizer_and_model,
)

DATA = ROOT / "data" / "preference" / "dpo_en_demo_sample.json"

# The job, shared by both sides: peers.ARCH and peers.LORA (the network and adapter), and
MAX_LENGTH, MAX_PROMPT_LENGTH = 256, 128
LEARNING_RATE, BETA = 5e-4, 0.1
SWEEP_BETAS = (0.05, 0.1, 0.2, 0.5)


# -- the data -------------------------------------------------------------------------------------


def _fit(text: str, budget: int, count, keep: str) -> str:
    """`text` cut at word boundaries (keeping its start or its end) to at most `budget` tokens."""
    words = re.split(r"(\s+)", text)  # words and the whitespace between them, both kept
    while words and count("".join(words)) > budget:
        cut = max(1, (len(words) // 20) * 2)  # ~10% at a time, then word by word
        words = words[cut:] if keep == "end" else words[:-cut]
    return "".join(words).strip() if keep == "start" else "".join(words).lstrip()


def standard_rows(tokenizer) -> tuple[list[dict], list[int]]:
    """The DPO sample as TRL-standard rows, cut so that nothing is truncated later, and the real
    tokens of each pair (prompt + chosen + EOS + prompt + rejected + EOS)."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rows, tokens = [], []
    for record in json.loads(DATA.read_text()):
        prompt = "\n".join(turn["value"].strip() for turn in record["conversations"])
        prompt = _fit(prompt, MAX_PROMPT_LENGTH, count, keep="end") + "\n"  # the end is nearest the answer
        p = count(prompt)
        chosen = _fit(record["chosen"]["value"], MAX_LENGTH - p - 1, count, keep="start")
        rejected = _fit(record["rejected"]["value"], MAX_LENGTH - p - 1, count, keep="start")
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        tokens.append(2 * p + count(chosen) + count(rejected) + 2)
    return rows, tokens


# ---- ftexp side: the CLI, one process --------------------------------------------------------------

def ftexp_overrides(data: Path, args: argparse.Namespace) -> list[str]:
    """The job as ftexp overrides (without the adapter and reference choice)."""
    return [
        "task=dpo", *ftexp_model_overrides(), "data=dpo_demo", f"data.path={data}",
        f"data.max_length={MAX_LENGTH}", f"data.max_prompt_length={MAX_PROMPT_LENGTH}",
        f"data.batch_size={args.batch_size}", "data.split_column=split",
        f"task.beta={BETA}", "task.loss_type=sigmoid", "task.sample_generations=0",
        f"optimizer.learning_rate={LEARNING_RATE}", "optimizer.weight_decay=0.0",
        "scheduler=linear", "scheduler.warmup_fraction=0.0", f"trainer.max_steps={args.steps}",
        *FTEXP_TRAINING_ONLY,
    ]


def ftexp_side(data: Path, out: Path, args: argparse.Namespace, tokens_per_pair: float) -> dict:
    """ftexp: `python -m ftexp task=dpo adapter=lora …` in its own process; figures from its
    metrics.json and from the process."""
    run_dir = out / "ftexp-run"
    command = [sys.executable, "-m", "ftexp", *ftexp_overrides(data, args), *ftexp_lora_overrides(),
               f"paths.output_dir={run_dir}"]
    log = out / "ftexp.log"
    wall, cpu, rss, rc = run_process(command, log, child_env(args.threads, out / "ftexp-cache"))
    if rc != 0:
        raise failed("the ftexp side", log)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps = int(metrics["global_steps"])
    # Real tokens through the policy forward, as ftexp counts them if it does; else from the data
    # (every pair is seen once per epoch, nothing is truncated).
    tokens = metrics.get("train_tokens") or round(tokens_per_pair * steps * args.batch_size)
    shutil.rmtree(run_dir, ignore_errors=True)  # keep the log, drop the run's files
    return {"steps": steps, "train_s": float(metrics["fit_seconds"]), "process_s": wall, "cpu_s": cpu,
            "tokens": int(tokens), "rss_mib": rss, "loss": metrics.get("train/loss")}


# ---- TRL side: DPOTrainer in the TRL venv, one process ---------------------------------------------

def trl_side(python: Path, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """TRL: this file run by the TRL venv's python with --trl-child (see trl_child)."""
    spec = {"data": str(data), "tokenizer": tokenizer_dir(), "steps": args.steps,
            "batch_size": args.batch_size, "output_dir": str(out / "trl-run"),
            "result": str(out / "trl-result.json")}
    return run_trl_child(python, __file__, spec, out, args.threads)


def trl_child(spec: dict) -> None:
    """Runs in the TRL venv: build the model, train with DPOTrainer, write the figures."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    tokenizer, model = trl_tokenizer_and_model(spec["tokenizer"])
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")}
            for r in json.loads(Path(spec["data"]).read_text()) if r["split"] == "train"]
    counted = {"real": 0, "padded": 0}

    class CountingDPOTrainer(DPOTrainer):
        """Counts the tokens of each training batch (chosen and rejected rows, prompt included)."""

        def training_step(self, model, inputs, *rest, **kwargs):
            counted["real"] += int(inputs["attention_mask"].sum())
            counted["padded"] += int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, *rest, **kwargs)

    training = DPOConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"], learning_rate=LEARNING_RATE, lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=BETA, loss_type=["sigmoid"],
        max_length=MAX_LENGTH, bf16=False, fp16=False, gradient_checkpointing=False,
        disable_dropout=True, eval_strategy="no", save_strategy="no", report_to="none",
        use_cpu=True, dataloader_num_workers=0, seed=42)
    trainer = CountingDPOTrainer(model=model, args=training, processing_class=tokenizer,
                                 train_dataset=Dataset.from_list(rows),
                                 peft_config=LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA))
    prepared = trainer.train_dataset  # tokenized by TRL: prompt_ids, chosen_ids, rejected_ids
    dataset_tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(
        prepared["prompt_ids"], prepared["chosen_ids"], prepared["rejected_ids"], strict=True))
    started = time.perf_counter()
    output = trainer.train()
    train_s = time.perf_counter() - started
    Path(spec["result"]).write_text(json.dumps({
        "steps": trainer.state.global_step, "train_s": train_s, "tokens": counted["real"],
        "padded_tokens": counted["padded"], "dataset_tokens": dataset_tokens, "loss": output.training_loss,
        "self_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads()}))


# -- part 2: the beta sweep, precompute vs copy ----------------------------------------------------

def sweep(reference: str, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """One 4-trial multirun with full fine-tuning and `task.reference=<reference>`."""
    sweep_dir = out / f"sweep-{reference}"
    command = [sys.executable, "-m", "ftexp", "-m", *ftexp_overrides(data, args), "adapter=none",
               f"task.reference={reference}", f"task.beta={','.join(map(str, SWEEP_BETAS))}",
               f"hydra.sweep.dir={sweep_dir}"]
    cache = out / f"sweep-{reference}-cache"  # empty at the start of each sweep
    log = out / f"sweep-{reference}.log"
    wall, cpu, rss, rc = run_process(command, log, child_env(args.threads, cache))
    if rc != 0:
        raise failed(f"the {reference} sweep", log)
    # hydra.sweep.subdir is ${hydra.job.num}: trial i runs in <sweep dir>/i.
    trials = [json.loads((sweep_dir / str(i) / "metrics.json").read_text())
              for i in range(len(SWEEP_BETAS))]
    return {"wall": wall, "cpu": cpu, "rss_mib": rss, "fit_s": [t["fit_seconds"] for t in trials],
            "steps": [t["global_steps"] for t in trials],
            "passes": [t.get("reference_forward_passes", "?") for t in trials]}


# -- main -------------------------------------------------------------------------------------------

def prepare_data(out: Path) -> tuple[Path, list[int]]:
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # "sequence longer than 512": counting tokens, not running them
    tokenizer = ensure_eos(AutoTokenizer.from_pretrained(tokenizer_dir()))
    rows, tokens = standard_rows(tokenizer)
    path = out / "dpo_standard.json"
    # One file for both sides. ftexp needs a validation and a test split to exist: the first two
    # pairs again (never used while timing: no validation runs, no test during training).
    extra = [{**rows[0], "split": "validation"}, {**rows[1], "split": "test"}]
    path.write_text(json.dumps([{**r, "split": "train"} for r in rows] + extra, indent=1))
    return path, tokens


def compare(data: Path, tokens: list[int], out: Path, args: argparse.Namespace) -> None:
    python = ensure_trl_venv()
    per_pair = sum(tokens) / len(tokens)
    runs: dict[str, list[dict]] = {"ftexp": [], "TRL": []}
    for _ in range(args.repeats):  # alternate, so that drift in the machine's speed hits both
        if not args.trl_only:
            runs["ftexp"].append(ftexp_side(data, out, args, per_pair))
        runs["TRL"].append(trl_side(python, data, out, args))
    trl_version = subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"],
                                 capture_output=True, text=True).stdout.strip()

    print(f"\nDPO, LoRA r={LORA['r']} on {'/'.join(LORA['target_modules'])}, random-init Llama "
          f"({ARCH['num_hidden_layers']} layers × {ARCH['hidden_size']}), {len(tokens)} pairs "
          f"({sum(tokens)} real tokens per epoch), batch {args.batch_size}, {args.steps} steps, fp32, "
          f"{args.threads} threads; TRL {trl_version}; {args.repeats} run(s) per side, "
          "ratios from the fastest\n")
    print("| side | optimizer steps | train s | process s | process CPU s | real tokens | tokens/s "
          "| peak RSS MiB | train loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    best = {}
    for side, results in runs.items():
        if not results:
            continue
        for r in results:
            r["tps"] = r["tokens"] / r["train_s"]
        best[side] = {**max(results, key=lambda r: r["tps"]),
                      "rss_mib": max(r["rss_mib"] for r in results)}
        for i, r in enumerate(results):  # every run; the ratios below use the fastest
            loss = f"{r['loss']:.4f}" if isinstance(r.get("loss"), (int, float)) else "–"
            name = side if len(results) == 1 else f"{side} ({i + 1})"
            print(f"| {name} | {r['steps']} | {r['train_s']:.2f} | {r['process_s']:.1f} | {r['cpu_s']:.1f} | "
                  f"{r['tokens']} | {r['tps']:.0f} | {r['rss_mib']:.0f} | {loss} |")
    if best["TRL"]["dataset_tokens"] != sum(tokens):
        print(f"\nWARNING: TRL tokenized the pairs into {best['TRL']['dataset_tokens']} tokens, "
              f"not {sum(tokens)}: the two sides do not train on the same tokens")
    if "padded_tokens" in best["TRL"]:
        print(f"\nTRL's batches held {best['TRL']['padded_tokens']} token positions "
              f"({best['TRL']['tokens'] / best['TRL']['padded_tokens']:.0%} real)")
    if len(best) == 2:
        f, t = best["ftexp"], best["TRL"]
        print(f"\nftexp / TRL throughput: {f['tps'] / t['tps']:.2f}x (goal ≥ 1.00x); "
              f"TRL / ftexp peak RSS: {t['rss_mib'] / f['rss_mib']:.2f}x (goal ≥ 1.00x); "
              f"whole process, TRL / ftexp: wall {t['process_s'] / f['process_s']:.2f}x, "
              f"CPU {t['cpu_s'] / f['cpu_s']:.2f}x")


def sweeps(data: Path, out: Path, args: argparse.Namespace) -> None:
    results = {ref: sweep(ref, data, out, args) for ref in ("precompute", "copy")}
    print(f"\n{len(SWEEP_BETAS)}-trial sweep over task.beta={','.join(map(str, SWEEP_BETAS))}, full "
          f"fine-tuning, {args.steps} steps per trial, one multirun process per sweep\n")
    print("| task.reference | sweep wall s | sweep CPU s | fit s per trial | reference_forward_passes "
          "per trial | peak RSS MiB |")
    print("|---|---:|---:|---|---|---:|")
    for ref, r in results.items():
        print(f"| {ref} | {r['wall']:.1f} | {r['cpu']:.1f} | {' / '.join(f'{s:.1f}' for s in r['fit_s'])} | "
              f"{' / '.join(map(str, r['passes']))} | {r['rss_mib']:.0f} |")
    copy, pre = results["copy"], results["precompute"]
    print(f"\ncopy / precompute: sweep wall time {copy['wall'] / pre['wall']:.2f}x, "
          f"CPU time {copy['cpu'] / pre['cpu']:.2f}x, "
          f"sum of fit seconds {sum(copy['fit_s']) / sum(pre['fit_s']):.2f}x")


def main() -> None:
    if trl_child_requested(trl_child):
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["compare", "sweep", "all"], default="all")
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps per run (15 = one epoch)")
    parser.add_argument("--batch-size", type=int, default=4)
    add_side_arguments(parser, "runs per side in `compare` (alternating); the fastest is reported",
                       "compare: run the TRL side only", "keep logs and sweep dirs here")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="ftexp-dpo-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    data, tokens = prepare_data(out)
    if args.part in ("compare", "all"):
        compare(data, tokens, out, args)
    if args.part in ("sweep", "all"):
        sweeps(data, out, args)
    print(f"\nlogs in {out}")


if __name__ == "__main__":
    main()

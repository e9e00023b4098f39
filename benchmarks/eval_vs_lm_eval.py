"""Benchmark evaluation: ftexp's in-process evaluation against the `lm_eval` command on the run's
export, the same tasks, few-shot count and limit, on this machine.

    python benchmarks/eval_vs_lm_eval.py [--run <causal LM run dir>] [--repeats 3] [--limit 48]
    python benchmarks/eval_vs_lm_eval.py --model <model dir> --batch-size auto   # e.g. a 0.5B on a GPU

Three ways to score one trained run:
  in-run       what `eval=lm_eval` does at the end of training: the network is already in memory,
               so only the harness's work is timed (measured here in this process, after loading
               the run as the recipe leaves it)
  evaluate     `python -m ftexp.evaluate <export>`: a whole process (imports, model load, harness)
  lm_eval CLI  `lm_eval run --model hf --model_args pretrained=<export>`: the same, lm-eval's way
The two whole-process sides run in turn (B C B C …) so a drift of the machine's speed hits both.
Without --run, a tiny LoRA run (model=tiny_llama, one epoch of the demo's SFT data) is trained
first into outputs/bench/eval_vs_lm_eval/. With --model (a saved transformers model dir), the two
whole-process sides score that model as it is, with no run and so no in-run side; both use CUDA
when there is one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_header  # noqa: E402
from peers import ROOT, child_env, failed, run_process  # noqa: E402

TASKS = "ftexp_colours_mc,ftexp_sums_gen"
SHIPPED_TASKS = ROOT / "src" / "ftexp" / "evaluation" / "tasks"
WORK = ROOT / "outputs" / "bench" / "eval_vs_lm_eval"


def train_tiny_run(out: Path) -> Path:
    import subprocess

    if (out / "checkpoints" / "best.ckpt").is_file():
        return out
    data = ROOT / "data" / "eval_demo" / "colour_sft.jsonl"
    command = [sys.executable, "-m", "ftexp", "model=tiny_llama", "adapter=lora", "task=causal_lm",
               f"data.path={data}", "data.split_column=split", "data.text_columns=[prompt]",
               "data.label_column=response", "data.prompt_template='{prompt} '",
               "data.response_template='{response}'", "data.max_length=32", "data.batch_size=32",
               "trainer.max_epochs=1", "trainer.precision=32", "trainer.enable_progress_bar=false",
               "task.sample_generations=0", f"hydra.run.dir={out}"]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(2, WORK / "cache"))
    if done.returncode != 0:
        raise SystemExit("training the tiny run failed:\n" + done.stderr[-3000:])
    return out


def in_run_seconds(run: Path, settings: list[str], repeats: int) -> list[float]:
    """The evaluation stage of a run: the network in memory, the harness's work only."""
    from ftexp.data.causal_lm import decoder_tokenizer
    from ftexp.evaluate import eval_settings, parse_overrides
    from ftexp.evaluation import harness
    from ftexp.predict import load_trained

    task, tokenizer, cfg = load_trained(run)
    ev = eval_settings(cfg.get("eval"), parse_overrides(settings)[0])
    manager = harness.check_tasks(ev)  # a run checks its tasks before training, not in this stage
    network, tokenizer = task.network.eval(), decoder_tokenizer(tokenizer)
    seconds = []
    for index in range(repeats):
        started = time.perf_counter()
        harness.evaluate(network, tokenizer, ev, WORK / f"in_run_{index}", chat=False,
                         model_name="bench", manager=manager)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished causal LM run dir (default: train a tiny one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=48, help="items per task")
    parser.add_argument("--num-fewshot", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="score this model dir instead of a run's export")
    parser.add_argument("--batch-size", default="1", help="an integer or auto (both sides)")
    args = parser.parse_args()

    import torch

    from ftexp.export import export_run

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    run = None if args.model else args.run or train_tiny_run(WORK / "run")
    export = args.model or WORK / f"export_{run.name}"
    if run is not None and not (export / "config.json").is_file():
        export_run(run, export, dtype="float32")
    settings = [f"eval.tasks=[{TASKS}]", f"eval.limit={args.limit}", f"eval.num_fewshot={args.num_fewshot}",
                f"eval.batch_size={args.batch_size}"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = child_env(args.threads, WORK / "cache")
    ours = [sys.executable, "-m", "ftexp.evaluate", str(export), *settings, "-o", str(WORK / "evaluate")]
    theirs = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={export}",
              "--tasks", TASKS, "--limit", str(args.limit), "--num_fewshot", str(args.num_fewshot),
              "--batch_size", args.batch_size, "--device", device, "--include_path", str(SHIPPED_TASKS),
              "--log_samples", "--output_path", str(WORK / "lm_eval_cli")]

    print(machine_header())
    print(f"{'run: ' + str(run) if run else 'model: ' + str(export)}; tasks {TASKS}, {args.limit} items "
          f"each, {args.num_fewshot}-shot, batch {args.batch_size}, {device}, {args.threads} threads, "
          f"{args.repeats} repeats\n")
    whole: dict[str, list[float]] = {"evaluate": [], "lm_eval CLI": []}
    for _ in range(args.repeats):
        for side, command in (("evaluate", ours), ("lm_eval CLI", theirs)):
            log = WORK / f"{side.replace(' ', '_')}.log"
            wall, _, _, code = run_process(command, log, env)
            if code != 0:
                raise failed(side, log)
            whole[side].append(wall)
    cli = statistics.median(whole["lm_eval CLI"])
    rows = [("python -m ftexp.evaluate <export>", whole["evaluate"]),
            ("lm_eval run --model hf <export>", whole["lm_eval CLI"])]
    if run is not None:
        rows.insert(0, ("in-run (network in memory)", in_run_seconds(run, settings, args.repeats)))
    print(f"| {'side':<36} | median s | min s | max s | lm_eval CLI / side |")
    print(f"|{'-' * 38}|---------:|------:|------:|-------------------:|")
    for name, seconds in rows:
        median = statistics.median(seconds)
        print(f"| {name:<36} | {median:8.2f} | {min(seconds):5.2f} | {max(seconds):5.2f} | "
              f"{cli / median:17.2f}× |")
    pairs = [f"{theirs_s / ours_s:.2f}×"
             for ours_s, theirs_s in zip(whole["evaluate"], whole["lm_eval CLI"], strict=True)]
    print(f"\nlm_eval CLI / ftexp.evaluate, pair by pair (each pair run back to back): {', '.join(pairs)}")


if __name__ == "__main__":
    main()

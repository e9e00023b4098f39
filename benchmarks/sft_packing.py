"""Packing on an SFT job: ftexp padded vs packed (best-fit decreasing), and LLaMA-Factory's packing
when it installs.

The job: a random-init Llama (4 layers, 256 wide, 4 heads, 2 KV heads, MLP 688; the MiniLM
vocabulary and tokenizer, as `model=tiny_llama` has; built with seed 0 as ftexp builds random-init
models, so every run starts from the same weights), LoRA r=8 / alpha 16 / dropout 0.05 on q_proj,
k_proj, v_proj, o_proj, the shipped CodeAlpaca sample (400 training / 50 validation rows, Alpaca
template, loss on the responses), max length 512, batch 4, fp32, AdamW at lr 2e-4 with ftexp's
default schedule (10% linear warm-up, linear decay), one epoch, evaluation at its end.

For each run: rows per epoch (samples, or the packed rows they fill), optimizer steps, real
(non-padding) training tokens per second of training (`train_tokens_per_second` of
metrics.json: validation excluded), fit seconds, and validation loss. Packing changes the
batches, so the two runs end at different weights and their validation losses differ by training
noise; whether packed *evaluation* is exact is checked on one set of weights: the packed run's
checkpoint scored on the validation split padded and packed (goal: equal within 1e-4 relative).

LLaMA-Factory (`--llamafactory`, also tried by `make bench-packing`): installed into its own venv,
`.venv-bench-llamafactory/` (git-ignored; never the project's `.venv`), with `torch==<.venv's
version>` (TORCH_SPEC overrides, as for `make install`) and `llamafactory==0.9.5`. That release
pins its own transformers (≤ 5.6), peft and accelerate, older than `.venv`'s, so the peer runs
on its own library versions. If the install fails or takes more than INSTALL_TIMEOUT seconds,
the script prints a note and skips that side. LLaMA-Factory's side counts its packed rows
(`neat_packing`: position ids restart per sample, as ftexp's) and its real tokens per second.

    .venv/bin/python benchmarks/sft_packing.py                 # ftexp padded vs packed, 2 repeats
    .venv/bin/python benchmarks/sft_packing.py --llamafactory  # + LLaMA-Factory (or: make bench-packing)

About 2 minutes per ftexp run on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_header  # noqa: E402

LF_VENV = ROOT / ".venv-bench-llamafactory"
LF_VERSION = "0.9.5"
INSTALL_TIMEOUT = 600
ARCH = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 688}
MAX_LENGTH, BATCH, LR = 512, 4, 2e-4
OVERRIDES = ["task=causal_lm", "data=code_alpaca", "model=tiny_llama", "adapter=lora",
             *(f"model.random_init.{k}={v}" for k, v in ARCH.items()),
             "adapter.target_modules=[q_proj,k_proj,v_proj,o_proj]", f"data.max_length={MAX_LENGTH}",
             f"data.batch_size={BATCH}", f"optimizer.learning_rate={LR}", "trainer.precision=32",
             "trainer.max_epochs=1", "task.sample_generations=0", "trainer.enable_progress_bar=false",
             "callbacks.resume_every_minutes=null"]


def run_ftexp(out: Path, packing: bool, env: dict[str, str]) -> dict[str, float]:
    run_dir = out / f"ftexp_{'packed' if packing else 'padded'}"
    command = [sys.executable, "-m", "ftexp", *OVERRIDES, f"data.packing={str(packing).lower()}",
               f"hydra.run.dir={run_dir}", f"paths.cache_dir={out / 'cache'}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ftexp run failed:\n{(done.stdout + done.stderr)[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    found = re.search(r"train split: (\d+) samples(?: packed into (\d+) rows)?", done.stdout + done.stderr)
    rows = int(found.group(2) or found.group(1)) if found else float("nan")
    return {"rows": rows, "steps": metrics["global_steps"], "tokens_s": metrics["train_tokens_per_second"],
            "fit": metrics["fit_seconds"], "wall": wall, "val_loss": metrics["val/loss"], "run": str(run_dir)}


def validation_loss_both_ways(run: Path) -> tuple[float, float]:
    """The run's best weights scored on the validation split padded, then packed."""
    import logging

    import lightning as L
    from omegaconf import OmegaConf

    from ftexp.config.data import DataConfig
    from ftexp.data.causal_lm import CausalLMDataModule
    from ftexp.predict import load_trained

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner per validate call
    task, tokenizer, cfg = load_trained(run)
    losses = []
    for packing in (False, True):
        data = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), cfg.data,
                                                   {"packing": packing, "cache_tokenized": False}))
        module = CausalLMDataModule(data, tokenizer, raw_text=False,
                                    train_on_prompt=cfg.task.get("train_on_prompt", False))
        module.setup()
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False)
        losses.append(trainer.validate(task, module, verbose=False)[0]["val/loss"])
    return losses[0], losses[1]


# -- LLaMA-Factory -----------------------------------------------------------------------------------

def lf_requirements() -> list[str]:
    from importlib.metadata import version

    torch_spec = os.environ.get("TORCH_SPEC") or f"torch=={version('torch').split('+')[0]}"
    return [*torch_spec.split(), f"llamafactory=={LF_VERSION}"]


def ensure_lf_venv() -> Path | None:
    """The LLaMA-Factory venv's python, or None (with a printed note) when it will not install."""
    python = LF_VENV / "bin" / "python"
    marker = LF_VENV / ".bench-requirements"
    wanted = "\n".join(lf_requirements())
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"setting up {LF_VENV.name}/ (once, at most {INSTALL_TIMEOUT} s): pip install "
          f"{' '.join(wanted.splitlines())}", flush=True)
    shutil.rmtree(LF_VENV, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LF_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted.splitlines()], check=True,
                       timeout=INSTALL_TIMEOUT)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        print(f"note: LLaMA-Factory did not install ({type(err).__name__}); skipping its side.")
        return None
    marker.write_text(wanted)
    return python


def export_start(out: Path) -> Path:
    """The random-init Llama ftexp starts from, and its tokenizer, as a model directory."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import compose_config
    from ftexp.builders.backbone import load_backbone, load_tokenizer

    cfg = compose_config(OVERRIDES, output_dir=out / "export")
    model = load_backbone("random-init", random_init=dict(cfg.model.random_init), causal_lm=True)
    target = out / "start_model"
    model.save_pretrained(target)
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    tokenizer.save_pretrained(target)
    return target


LF_SIDE = r'''
import json, sys, time
from pathlib import Path
out, model_dir, data_dir = map(Path, sys.argv[1:4])
from llamafactory.train.tuner import run_exp
args = dict(model_name_or_path=str(model_dir), stage="sft", do_train=True, do_eval=True,
            finetuning_type="lora", lora_rank=8, lora_alpha=16, lora_dropout=0.05,
            lora_target="q_proj,k_proj,v_proj,o_proj", dataset="code_alpaca", eval_dataset="code_alpaca_val",
            dataset_dir=str(data_dir), template="alpaca", cutoff_len=%(max_length)d, packing=True,
            neat_packing=True, per_device_train_batch_size=%(batch)d, per_device_eval_batch_size=8,
            learning_rate=%(lr)g, lr_scheduler_type="linear", warmup_ratio=0.1, num_train_epochs=1,
            max_grad_norm=1.0, weight_decay=0.01, bf16=False, fp16=False, use_cpu=True,
            output_dir=str(out / "lf"), report_to="none", save_strategy="no", eval_strategy="epoch",
            logging_steps=1000, overwrite_output_dir=True, seed=42, preprocessing_num_workers=1,
            include_num_input_tokens_seen=True)
started = time.perf_counter()
run_exp(args)
print("LF_WALL", time.perf_counter() - started)
'''


def run_llamafactory(python: Path, out: Path, env: dict[str, str]) -> dict[str, float] | None:
    import pandas as pd

    data_dir = out / "lf_data"
    data_dir.mkdir()
    table = pd.read_json(ROOT / "data" / "code_alpaca" / "code_alpaca_sample.jsonl", lines=True)
    for split, name in (("train", "code_alpaca"), ("validation", "code_alpaca_val")):
        table[table["split"] == split][["instruction", "input", "output"]].fillna("").to_json(
            data_dir / f"{name}.json", orient="records")
    (data_dir / "dataset_info.json").write_text(json.dumps(
        {name: {"file_name": f"{name}.json"} for name in ("code_alpaca", "code_alpaca_val")}))
    model_dir = export_start(out)
    script = out / "lf_side.py"
    script.write_text(LF_SIDE % {"max_length": MAX_LENGTH, "batch": BATCH, "lr": LR})
    done = subprocess.run([str(python), str(script), str(out), str(model_dir), str(data_dir)], cwd=out,
                          env={**env, "DISABLE_VERSION_CHECK": "1"}, capture_output=True, text=True)
    log = done.stdout + done.stderr
    (out / "lf.log").write_text(log)
    if done.returncode != 0:
        print(f"note: LLaMA-Factory's run failed (log: {out / 'lf.log'}):\n{log[-1500:]}")
        return None
    results = json.loads((out / "lf" / "all_results.json").read_text())
    examples = re.search(r"Num examples = ([\d,]+)", log)  # the Trainer's count of (packed) rows
    return {"rows": int(examples.group(1).replace(",", "")) if examples else float("nan"),
            "runtime": results["train_runtime"],
            "tokens_seen": results.get("num_input_tokens_seen", float("nan")),
            "val_loss": results.get("eval_loss", float("nan"))}


# -- main -----------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--llamafactory", action="store_true", help="also run LLaMA-Factory (own venv)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(machine_header())
    print(f"job: Llama {ARCH['num_hidden_layers']}x{ARCH['hidden_size']} random-init, LoRA r8 q/k/v/o, "
          f"CodeAlpaca 400 rows, max length {MAX_LENGTH}, batch {BATCH}, fp32, 1 epoch\n", flush=True)
    results: dict[str, list[dict[str, float]]] = {"padded": [], "packed": []}
    with tempfile.TemporaryDirectory(prefix="ftexp-bench-") as tmp:
        for r in range(args.repeats):
            order = ("padded", "packed") if r % 2 == 0 else ("packed", "padded")
            for name in order:
                out = Path(tmp) / f"r{r}"
                out.mkdir(exist_ok=True)
                result = run_ftexp(out, name == "packed", env)
                results[name].append(result)
                print(f"repeat {r + 1} {name:<7} {result['tokens_s']:8.0f} real tokens/s, "
                      f"fit {result['fit']:6.1f} s, {result['rows']} rows, val loss {result['val_loss']:.5f}",
                      flush=True)
        padded_eval, packed_eval = validation_loss_both_ways(Path(results["packed"][0]["run"]))

        lf = None
        if args.llamafactory:
            python = ensure_lf_venv()
            if python is not None:
                out = Path(tmp) / "lf"
                out.mkdir()
                try:
                    lf = run_llamafactory(python, out, env)
                except Exception as err:  # the peer is best effort: its failure must not hide ours
                    print(f"note: LLaMA-Factory's side failed ({type(err).__name__}: {err}); skipped.")

    med = {name: {k: statistics.median(r[k] for r in runs) for k in ("tokens_s", "fit", "val_loss")}
           for name, runs in results.items()}
    speedups = [p["tokens_s"] / q["tokens_s"]
                for p, q in zip(results["packed"], results["padded"], strict=True)]
    print(f"\npacked / padded real tokens/s: {statistics.median(speedups):.2f}x (each: "
          f"{', '.join(f'{x:.2f}x' for x in speedups)})\n")
    header = f"{'run':<22} {'rows':>5} {'steps':>6} {'real tok/s':>11} {'fit s':>7} {'val loss':>9}"
    print(header)
    print("-" * len(header))
    for name in ("padded", "packed"):
        first = results[name][0]
        label = "ftexp padded" if name == "padded" else "ftexp packed (BFD)"
        print(f"{label:<22} {first['rows']:>5} {first['steps']:>6} {med[name]['tokens_s']:>11.0f} "
              f"{med[name]['fit']:>7.1f} {med[name]['val_loss']:>9.5f}")
    if lf is not None:
        print(f"{'LLaMA-Factory packed':<22} {lf['rows']:>5} {'':>6} {'(see note)':>11} "
              f"{lf['runtime']:>7.1f} {lf['val_loss']:>9.5f}")
        print(f"\nLLaMA-Factory: train_runtime {lf['runtime']:.1f} s, input tokens seen {lf['tokens_seen']} "
              "(padding included when it counts them so)")
    relative = abs(packed_eval - padded_eval) / abs(padded_eval)
    verdict = "OK" if relative <= 1e-4 else "FAIL"
    print(f"\nsame weights (the packed run's checkpoint), validation loss padded {padded_eval:.6f} vs "
          f"packed {packed_eval:.6f}: relative difference {relative:.1e} ({verdict}: ≤ 1e-4)")


if __name__ == "__main__":
    main()

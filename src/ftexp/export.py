"""Export a trained causal-LM run as a plain Hugging Face model directory:

    python -m ftexp.export <run dir> [-o DIR] [--dtype bfloat16|float32] [--adapter-only] [--base DIR]

The adapter is merged into the base weights. A base trained in 8-bit / 4-bit / HQQ is dequantized
first, so the merged weights are the ones the adapter was trained against. A base that was saved
quantized (GPTQ, AWQ, …: its checkpoint carries a quantization_config) cannot take a merge: the
adapter merges into the unquantized model named by `--base` / model.export_base, or is written
alone (as with `--adapter-only`: PEFT's adapter_config.json + adapter_model.safetensors, loaded
with peft's AutoPeftModelForCausalLM). The directory holds
safetensors weights, the config, the tokenizer, a generation config and a model card with the
training config and metrics; `AutoModelForCausalLM.from_pretrained(DIR)` loads it. A reward
model (task=reward on a decoder LLM) exports as `AutoModelForSequenceClassification` with
num_labels=1, giving the scores `ftexp.predict` gives.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ftexp.config.adapter import PROMPT_LEARNING_ADAPTERS
from ftexp.runs import atomic, run_dir
from ftexp.runs.console import quiet_third_party
from ftexp.runs.errors import FtexpError, reported_as_one_line


def _sequence_scorer(hparams: dict[str, Any], state_dict: dict[str, Any], dtype: str, run: Path):
    """A reward run as transformers' AutoModelForSequenceClassification with num_labels=1: the
    merged transformer, and the reward head's weights as its `score` layer (both bias-free).
    transformers reads a decoder's score at its last non-padding token, as training pooled it;
    an encoder's classifier reads a pooler ftexp does not train, so encoders are refused."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ftexp.builders.backbone import DTYPES, is_decoder_only
    from ftexp.builders.init_from import merged_network

    backbone = merged_network(hparams, state_dict, dtype, causal_lm=False)
    if not is_decoder_only(backbone.config) or hparams["task"].get("pooling", "auto") not in ("auto", "last"):
        raise FtexpError(f"'{run}' is a reward model on {backbone.config.model_type} pooled by "
                         f"{hparams['task'].get('pooling')}; transformers' sequence classifiers read the "
                         "last token of decoder LLMs only, so only those (task.pooling=auto or last) export.")
    config = backbone.config
    config.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(config, dtype=DTYPES[dtype])
    getattr(model, model.base_model_prefix).load_state_dict(backbone.state_dict())
    head = [m for name, m in model.named_children()
            if name != model.base_model_prefix and isinstance(m, torch.nn.Linear)]
    if len(head) != 1:
        raise FtexpError(f"cannot find the score layer of {type(model).__name__} to export the reward "
                         "head into.")
    with torch.no_grad():
        head[0].weight.copy_(state_dict["network.head.weight"].to(DTYPES[dtype]))
    return model.requires_grad_(False).eval()


def _model_card(cfg_text: str, metrics: dict[str, Any], hparams: dict[str, Any]) -> str:
    from ftexp.tasks.registry import get_task

    auto = ("AutoModelForCausalLM" if get_task(hparams["task"]["name"]).language_model
            else "AutoModelForSequenceClassification")
    m, a, q = hparams["model"], hparams["adapter"], hparams.get("quant") or {"method": "none"}
    base = "random-init " + m["random_init"]["model_type"] if m.get("random_init") else m["name_or_path"]
    shown = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/", "best/"))}
    return (f"# Fine-tuned with ftexp\n\n"
            f"- base model: `{base}`\n"
            + (f"- started from the ftexp run `{m['init_from']}` (adapter "
               f"{m.get('init_from_adapter', 'merge')}d)\n" if m.get("init_from") else "")
            + f"- method: `adapter={a['method']}`, `quant={q['method']}` "
            f"(merged{' after dequantizing' if q['method'] != 'none' else ''})\n"
            f"- task: `{hparams['task']['name']}`\n\n"
            f"```python\nfrom transformers import {auto}, AutoTokenizer\n"
            f"model = {auto}.from_pretrained(\"<this directory>\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"<this directory>\")\n```\n\n"
            f"## Metrics\n\n```json\n{json.dumps(shown, indent=2)}\n```\n\n"
            f"## Training config\n\n```yaml\n{cfg_text}```\n")


def _export_plan(hparams: dict[str, Any], adapter_only: bool,
                 base: str | None) -> tuple[bool, str | None, str]:
    """(adapter alone?, base to merge into, why), from the run's model and the user's choice."""
    from ftexp.builders.backbone import checkpoint_quantization
    from ftexp.config.adapter import ADAPTERS

    m, method = hparams["model"], hparams["adapter"]["method"]
    base = base or m.get("export_base")
    if (adapter_only or base) and ADAPTERS[method].peft_config is None and method != "peft":
        raise FtexpError(f"adapter={method} trains the model's own weights, so there is no separate adapter "
                         "to write or merge elsewhere; export without --adapter-only / --base.")
    if (adapter_only or base) and m.get("init_from"):
        # The run's base is another run's merged network: an adapter alone, or one merged into a
        # named model, would silently drop that first run's training.
        raise FtexpError(f"this run started from the ftexp run '{m['init_from']}', whose training is part "
                         "of its base; export the merged model (without --adapter-only / --base).")
    saved_as = None if m.get("random_init") else checkpoint_quantization(
        m["name_or_path"], trust_remote_code=m["trust_remote_code"], revision=m.get("revision"))
    if base and checkpoint_quantization(base, trust_remote_code=m["trust_remote_code"]):
        raise FtexpError(f"--base / model.export_base={base} is itself quantized; name the unquantized "
                         "model the run's base was made from.")
    if adapter_only:
        return True, None, "as asked"
    if saved_as and not base:
        return True, None, (f"the base {m['name_or_path']} is saved {saved_as}-quantized and an adapter "
                            "cannot merge into quantized weights; to merge, name its unquantized model with "
                            "--base (or model.export_base)")
    return False, base, ""


def export_run(run: Path, output: Path, dtype: str = "bfloat16", adapter_only: bool = False,
               base: str | None = None) -> Path:
    from transformers import GenerationConfig

    from ftexp.builders.backbone import load_tokenizer
    from ftexp.builders.init_from import merged_network, trained_network
    from ftexp.data.causal_lm import decoder_tokenizer, ensure_eos
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
    spec = get_task(task)
    adapter_only, merge_into, why = _export_plan(hparams, adapter_only, base)
    if (adapter_only or merge_into) and not spec.language_model:
        raise FtexpError(f"'{run}' is a task={task} run; --adapter-only and --base export language models.")
    if adapter_only:
        model = trained_network(hparams, saved["state_dict"], dtype, merge=False)
        print(f"ftexp.export: writing the adapter alone ({why}).", file=sys.stderr)
    elif merge_into:
        unquantized = {**hparams, "model": {**hparams["model"], "name_or_path": merge_into,
                                            "random_init": None, "init_from": None}}
        model = merged_network(unquantized, saved["state_dict"], dtype)
    elif spec.language_model:
        model = merged_network(hparams, saved["state_dict"], dtype)
    else:  # a reward model: its merged transformer and its scalar head, as a sequence classifier
        model = _sequence_scorer(hparams, saved["state_dict"], dtype, run)
    m = hparams["model"]
    tokenizer = load_tokenizer(m.get("tokenizer") or m["name_or_path"],
                               trust_remote_code=m["trust_remote_code"], revision=m.get("revision"),
                               chat_template=m.get("chat_template"),
                               added_tokens=list(m.get("add_special_tokens") or []))
    ensure_eos(tokenizer)
    if spec.language_model:  # loaded elsewhere (lm-eval, vLLM, pipelines), it encodes as training did
        tokenizer = decoder_tokenizer(tokenizer)
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
        if spec.generates:
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
    parser.add_argument("--adapter-only", action="store_true",
                        help="write the PEFT adapter alone (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("--base", help="merge into this unquantized model instead of the run's base "
                                       "(for a base saved GPTQ / AWQ-quantized); default model.export_base")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    with reported_as_one_line(args.debug):
        quiet_third_party()
        out = export_run(args.run_dir, args.output or args.run_dir / "export", args.dtype,
                         adapter_only=args.adapter_only, base=args.base)
        kind = ("peft.AutoPeftModelForCausalLM" if (out / "adapter_config.json").is_file()
                else "AutoModelForCausalLM" if (out / "generation_config.json").is_file()
                else "AutoModelForSequenceClassification")
        print(f"exported to {out} (load with {kind}.from_pretrained)")


if __name__ == "__main__":
    from ftexp.runs.process import run_command

    run_command(main)  # main() reads sys.argv; then exits without the interpreter's teardown

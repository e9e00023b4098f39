"""`python -m ftexp.serve <run> --backend vllm`: vLLM's own OpenAI server over the run's export, on
CUDA. A LoRA run whose base vLLM can load by name is served as that base with the run's adapter as
a LoRA module (clients ask for the run's name; the base stays servable too); any other run is
exported merged and served whole. ftexp only prepares the directory and the command line: the
serving is vLLM's, with its batching, streaming and API-key check."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from ftexp.runs import run_dir
from ftexp.runs.errors import FtexpError

# Adapter methods vLLM serves as LoRA modules (DoRA, IA3, … have no vLLM kernels: merged instead).
LORA_MODULE_METHODS = ("lora",)
ADAPTER_DIR, MERGED_DIR = "export-vllm-adapter", "export"


@dataclass(frozen=True)
class Plan:
    model: str                  # what vLLM loads: a Hub id / path (LoRA base) or the merged export
    lora: Path | None = None    # the adapter served as a LoRA module under the run's name
    lora_rank: int | None = None
    export: Path | None = None  # the directory to export first (None: already there)
    adapter_only: bool = False


def plan(source: Path) -> Plan:
    """What to serve for a run dir, or an exported model directory as it is."""
    config_file = source / run_dir.CONFIG_FILE
    if not config_file.is_file():
        if (source / "config.json").is_file():
            return Plan(model=str(source))
        from ftexp.serving.engine import not_a_source

        raise not_a_source(source)
    cfg = OmegaConf.load(config_file)
    model, adapter = cfg.model, cfg.adapter
    base = model.get("export_base") or model.name_or_path
    as_module = (adapter.method in LORA_MODULE_METHODS and not model.get("random_init")
                 and not model.get("init_from"))
    if as_module:
        out = source / ADAPTER_DIR
        return Plan(model=str(base), lora=out, lora_rank=int(adapter.get("r", 16)),
                    export=None if (out / "adapter_config.json").is_file() else out, adapter_only=True)
    out = source / MERGED_DIR
    return Plan(model=str(out), export=None if (out / "config.json").is_file() else out)


def command(plan: Plan, name: str, host: str, port: int, api_key: str | None,
            max_batch: int) -> list[str]:
    """vLLM's OpenAI server command line for the plan."""
    served = name if plan.lora is None else Path(plan.model).name or plan.model
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", plan.model,
            "--served-model-name", served, "--host", host, "--port", str(port),
            "--max-num-seqs", str(max_batch), "--generation-config", "auto"]
    if plan.lora is not None:
        argv += ["--enable-lora", "--lora-modules", f"{name}={plan.lora}",
                 "--max-lora-rank", str(_supported_rank(plan.lora_rank or 16))]
    if api_key:
        argv += ["--api-key", api_key]
    return argv


def _supported_rank(rank: int) -> int:
    """The smallest of vLLM's allowed --max-lora-rank values that holds the adapter's rank."""
    allowed = (8, 16, 32, 64, 128, 256, 320, 512)
    return next((r for r in allowed if r >= rank), rank)


def check_available() -> None:
    import torch

    if not torch.cuda.is_available():
        raise FtexpError("--backend vllm needs a CUDA GPU, and none is visible; serve on this machine with "
                         "the default --backend transformers.")
    if importlib.util.find_spec("vllm") is None:
        raise FtexpError("--backend vllm needs vLLM, which is not installed; run: pip install vllm.")


def prepare(plan: Plan, source: Path) -> None:
    """Export the run as the plan needs (once: a later start reuses the directory)."""
    if plan.export is None:
        return
    from ftexp.export import export_run

    print(f"ftexp serve: exporting {'the adapter' if plan.adapter_only else 'the merged model'} "
          f"to {plan.export} for vLLM", file=sys.stderr)
    export_run(source, plan.export, adapter_only=plan.adapter_only)

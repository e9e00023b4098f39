"""Device-level choices handed to the Lightning Trainer: the (distributed) strategy, what it can
be combined with, how many processes a launcher started, and numeric precision."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Any

# torch is imported inside the functions that need it: config checks call `strategy_conflict`
# before a job starts, where importing torch would slow `--cfg job` and `--help`.
from ftexp.config.strategy import StrategyConfig
from ftexp.runs.errors import ConfigError

STRATEGIES = StrategyConfig.CHOICES["name"]
# Strategies that shard parameters: each rank holds a slice, so 8-bit weights (whose layout
# bitsandbytes keeps per tensor) cannot be split, and 4-bit ones only when stored in the compute
# dtype (FSDP flattens tensors of one dtype).
SHARDED = {"fsdp", "deepspeed3"}
DISTRIBUTED_ONLY_ON_CUDA = ("fsdp", "deepspeed")


def sharding_kind(strategy: dict[str, Any]) -> str | None:
    """'fsdp', 'deepspeed3' (ZeRO-3 shards parameters) or None (parameters replicated)."""
    if strategy["name"] == "fsdp" and strategy.get("sharding", "full_shard") != "no_shard":
        return "fsdp"
    if strategy["name"] == "deepspeed" and strategy.get("stage", 2) == 3:
        return "deepspeed3"
    return None


def strategy_conflict(strategy: dict[str, Any], quant: dict[str, Any], accelerator: str,
                      batch_size: Any, learning_rate: Any) -> str | None:
    """Why this strategy cannot run with these settings (one line with the fix), or None.
    Checked before any model loads."""
    name = strategy["name"]
    label = name if name != "deepspeed" else f"deepspeed (ZeRO-{strategy.get('stage', 2)})"
    if name in DISTRIBUTED_ONLY_ON_CUDA and accelerator == "cpu":
        return (f"strategy={label} needs CUDA GPUs ({'PyTorch FSDP' if name == 'fsdp' else 'DeepSpeed'} "
                "has no CPU backend); use strategy=ddp to train on several CPU processes.")
    sharded = sharding_kind(strategy)
    if sharded and quant["method"] == "8bit":
        return (f"quant=8bit cannot be sharded by strategy={label} (bitsandbytes int8 weights keep "
                "per-tensor state); use quant=4bit with quant.storage_dtype equal to "
                "quant.compute_dtype, or strategy=ddp.")
    if sharded and quant["method"] in ("hqq", "eetq"):
        return (f"quant={quant['method']} cannot be sharded by strategy={label} (its layers keep scales "
                "outside the parameters FSDP / DeepSpeed shard); use strategy=ddp, or quant=4bit with "
                "quant.storage_dtype equal to quant.compute_dtype.")
    if sharded and quant["method"] == "4bit" and quant["storage_dtype"] != quant["compute_dtype"]:
        return (f"quant=4bit under strategy={label} needs the packed weights stored in the compute "
                f"dtype so they shard with the rest; set quant.storage_dtype={quant['compute_dtype']}.")
    if name != "auto" and (batch_size == "auto" or learning_rate == "find"):
        what = "data.batch_size=auto" if batch_size == "auto" else "optimizer.learning_rate=find"
        return (f"{what} searches on one device and Lightning's tuner refuses distributed "
                f"strategies; find the value with strategy=auto first, then set it for strategy={name}.")
    return None


def launched_processes() -> tuple[int, int] | None:
    """(processes per node, nodes) when torchrun or SLURM started this process, else None:
    the Trainer must then be told the same numbers instead of spawning processes itself."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and "LOCAL_WORLD_SIZE" in env:
        local, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
        return local, max(1, world // local)
    if env.get("SLURM_NTASKS_PER_NODE") and env.get("SLURM_NNODES") and env.get("SLURM_JOB_NAME") != "bash":
        return int(env["SLURM_NTASKS_PER_NODE"].split("(")[0]), int(env["SLURM_NNODES"])
    return None


def transformer_block_classes(model_type: str) -> set[type]:
    """The architecture's repeated transformer block classes (e.g. LlamaDecoderLayer), read from
    the `_no_split_modules` transformers declares for it: FSDP wraps each block as one unit and
    activation checkpointing recomputes per block. Found without building the model."""
    # MODEL_MAPPING (public, the table AutoModel uses): config class -> base model class.
    from transformers import CONFIG_MAPPING, MODEL_MAPPING

    try:
        model_class = MODEL_MAPPING[CONFIG_MAPPING[model_type]]
    except KeyError as err:
        raise ConfigError(f"strategy=fsdp cannot find the transformer blocks of model type "
                          f"'{model_type}'; set strategy.auto_wrap=false to shard the model as one "
                          "unit.") from err
    module = sys.modules[model_class.__module__]
    # `_no_split_modules` is the class attribute transformers documents for model authors (and
    # accelerate's device_map reads); there is no public getter short of building the model.
    return {getattr(module, name) for name in model_class._no_split_modules or [] if hasattr(module, name)}


# FSDP and activation checkpointing insert these into parameter names; state dicts have none.
_WRAPPER_PREFIXES = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


def plain_parameter_name(name: str) -> str:
    """`network._fsdp_wrapped_module.layer.weight` → `network.layer.weight` (state-dict names)."""
    return _WRAPPER_PREFIXES.sub("", name)


def build_strategy(settings: dict[str, Any], block_classes: set[type] | None = None) -> Any:
    """A Lightning strategy (or its name) for the resolved `strategy` group."""
    name = settings["name"]
    if name == "auto":
        return "auto"
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=settings.get("find_unused_parameters", False))
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        blocks = block_classes or None
        return FSDPStrategy(
            auto_wrap_policy=blocks if settings.get("auto_wrap", True) else None,
            activation_checkpointing_policy=blocks if settings.get("activation_checkpointing") else None,
            cpu_offload=settings.get("cpu_offload", False),
            sharding_strategy=settings.get("sharding", "full_shard").upper(),
            state_dict_type=settings.get("state_dict", "full"),
            # Adapters leave most weights frozen inside the same blocks as trainable ones; FSDP
            # can flatten mixed requires_grad only when it keeps the original parameters.
            use_orig_params=True,
            limit_all_gathers=True,
        )
    if name == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("strategy=deepspeed_* needs DeepSpeed, which is not installed; "
                              "install it with: pip install 'ftexp[deepspeed]'")
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(stage=settings.get("stage", 2),
                                 offload_optimizer=settings.get("offload_optimizer", False),
                                 offload_parameters=settings.get("offload_parameters", False))
    raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")


def autocast_dtype(precision: Any) -> Any:
    """The autocast dtype of a Lightning precision (bf16-mixed, 16-mixed); None: no autocast."""
    import torch

    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))


def precompute_device(trainer: Any) -> tuple[Any, Any]:
    """Where work on the starting weights runs before fit (cached embeddings, reference log-probs):
    this process's own device (a DDP rank's GPU, not every rank's cuda:0), and the autocast dtype
    of the trainer's precision (None: full precision)."""
    return trainer.strategy.root_device, autocast_dtype(trainer.precision)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix units (AVX512-BF16 / AMX), where autocast pays off."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` → bf16-mixed where the hardware runs bf16 natively, else 32; others unchanged."""
    if precision != "auto":
        return precision
    import torch

    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_has_bf16():
        return "bf16-mixed"
    return "32-true"

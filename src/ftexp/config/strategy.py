"""The `strategy` group: one device, DDP, FSDP or DeepSpeed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftexp.config.base import GroupSchema


@dataclass
class StrategyConfig(GroupSchema):
    """How training is spread over devices (builders/strategy.py). Each option's file lists only
    the keys its strategy reads."""
    name: str = "auto"  # auto (one device) | ddp | fsdp | deepspeed
    # ddp: let DDP skip parameters that got no gradient this step (slower; some adapters need it).
    find_unused_parameters: bool = False
    # fsdp: full_shard | shard_grad_op | hybrid_shard | no_shard
    sharding: str = "full_shard"
    auto_wrap: bool = True  # fsdp: wrap each transformer block (found from the model) as a unit
    activation_checkpointing: bool = False  # fsdp: recompute each block's activations
    cpu_offload: bool = False  # fsdp: keep sharded parameters and gradients in CPU memory
    state_dict: str = "full"  # fsdp checkpoints: full (one file) | sharded (a folder per save)
    stage: int = 2  # deepspeed: ZeRO stage 2 (optimizer + gradients sharded) or 3 (+ parameters)
    offload_optimizer: bool = False  # deepspeed: optimizer state in CPU memory
    offload_parameters: bool = False  # deepspeed stage 3: parameters in CPU memory

    # The strategy stays a name read by builders/strategy.py rather than a `_target_`: building
    # it needs the model's block classes and the precision, wiring the YAML cannot express.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "name": ("auto", "ddp", "fsdp", "deepspeed"),
        "sharding": ("full_shard", "shard_grad_op", "hybrid_shard", "no_shard"),
        "state_dict": ("full", "sharded")}

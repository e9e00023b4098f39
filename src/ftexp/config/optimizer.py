"""The `optimizer` group: a `_target_` optimizer class and the blocks GaLore / APOLLO
(gradient projection), BAdam (block-coordinate updates) and Muon read."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig

from ftexp.config.base import GroupSchema, is_number
from ftexp.runs.errors import ConfigError, did_you_mean

# Packages whose optimizers read optimizer.projection from their parameter groups (GaLore,
# APOLLO), with the projection keys each one needs beyond the common ones.
MUON_TARGET = "torch.optim.Muon"  # optimizer=muon: Muon for block matrices, AdamW for the rest
ADAM_MINI_TARGET = "adam_mini.Adam_mini"  # optimizer=adam_mini
LOW_RANK_OPTIMIZER_PACKAGES: dict[str, tuple[str, ...]] = {
    "galore_torch": (), "apollo_torch": ("proj", "scale_type")}


@dataclass
class GradientProjection:
    """optimizer.projection (GaLore / APOLLO): each chosen 2-D weight's gradient is projected to
    `rank` directions, and the optimizer keeps its moments there: ~2·rank·max(m, n) numbers per
    m×n weight instead of AdamW's 2·m·n. Weights whose smaller side is ≤ rank, 1-D parameters and
    embeddings train as in plain AdamW."""
    rank: int = 128
    update_proj_gap: int = 200  # optimizer steps between recomputing the projection
    scale: float = 0.25  # multiplies the projected-back update (GaLore's alpha)
    proj_type: str = "std"  # std (project the smaller side) | reverse_std | left | right
    # Substrings of module names whose Linear weights are projected, e.g. [attn, mlp]; null:
    # every Linear inside the transformer blocks (attention and MLP).
    target_modules: Optional[list[str]] = None
    proj: Optional[str] = None  # APOLLO only: random | svd (how the projection is drawn)
    scale_type: Optional[str] = None  # APOLLO only: channel | tensor (the gradient-scaling factor)

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "proj_type": ("std", "reverse_std", "left", "right"), "proj": ("random", "svd"),
        "scale_type": ("channel", "tensor")}


@dataclass
class BlockCoordinate:
    """optimizer.blocks (BAdam): the `_target_` optimizer updates one block of the network (a
    transformer layer) at a time, switching every `switch_block_every` steps; only the active
    block has gradients and optimizer state. Full fine-tuning on one device."""
    switch_mode: str = "descending"  # random | ascending | descending | fixed (BAdam's orders)
    switch_block_every: int = 50
    start_block: Optional[int] = None  # null: the first block of the order
    include_embedding: bool = False  # the input embeddings as a block of their own
    # The parameters after the last layer (final norm, lm_head) as a block of their own; off: they
    # stay fixed. A task's new head (classification, regression) always trains.
    include_lm_head: bool = False
    # Blocks by parameter-name substrings, e.g. [[layers.0., layers.1.], [layers.2.]]; null: one
    # block per transformer layer.
    block_prefixes: Optional[list[list[str]]] = None

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "switch_mode": ("random", "ascending", "descending", "fixed")}


@dataclass
class MuonSettings:
    """optimizer.muon (optimizer=muon): torch.optim.Muon's arguments for the 2-D weights inside
    the transformer blocks; the rest trains with AdamW (optimizer.betas / eps)."""
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5  # Newton–Schulz iterations orthogonalising each update
    # match_rms_adamw: Moonshot's 0.2·sqrt(max(m, n)) scaling, the update's RMS matches AdamW's so
    # one learning rate serves both parts; original: Keller Jordan's sqrt(max(1, m/n)), which
    # wants a Muon-sized learning rate (~0.02).
    adjust_lr_fn: str = "match_rms_adamw"

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"adjust_lr_fn": ("match_rms_adamw", "original")}


def _check_nested(node: Any, schema: type, where: str) -> None:
    """Keys and allowed values of a nested optimizer node (the optimizer group takes its target's
    arguments, so its struct flag is off and a `+` override could add any key below it)."""
    known = [f.name for f in fields(schema)]
    for key in node.keys():
        if key not in known:
            hint = did_you_mean(str(key), known, f"{where}.")
            raise ConfigError(f"unknown config key '{where}.{key}'.{hint} "
                              f"Valid keys under '{where}': {', '.join(known)}.")
    for key, allowed in schema.CHOICES.items():
        value = node.get(key)
        if value is not None and str(value) not in allowed:
            raise ConfigError(f"'{where}.{key}={value}' is not a valid choice."
                              f"{did_you_mean(str(value), allowed)} Choices: {', '.join(allowed)}.")


@dataclass
class OptimizerConfig(GroupSchema):
    """A `_target_` optimizer class, built over the trainable parameters by builders/optim.py
    (`params` and `lr` are passed there; weight decay per parameter group). Other keys are the
    class's own arguments: +optimizer.momentum=0.9."""
    TAKES_TARGET_ARGUMENTS: ClassVar[bool] = True
    _target_: str = "torch.optim.AdamW"
    # A number, `auto` (the adapter method's usual rate, see ADAPTERS below) or
    # `find` (an LR range test before training; its plot goes to the run dir).
    learning_rate: Any = 2e-4
    weight_decay: float = 0.01  # never applied to biases and norm weights
    betas: Optional[list[float]] = field(default_factory=lambda: [0.9, 0.999])  # null: not passed
    eps: Optional[float] = 1e-8  # null: not passed
    # auto | true | false — the fused kernel, for optimizers that offer one (torch AdamW);
    # auto: on CUDA and CPU, unless fp16 mixed precision with gradient clipping (its scaler must
    # unscale before clipping).
    fused: Any = "auto"
    # GaLore / APOLLO (optimizer=galore, apollo): the low-rank gradient projection their
    # optimizers read; null for every other optimizer.
    projection: Optional[GradientProjection] = None
    # BAdam (optimizer=badam): block-coordinate updates wrapping the `_target_` optimizer; null: off.
    blocks: Optional[BlockCoordinate] = None
    # Muon (optimizer=muon): its settings for the block matrices; null for every other optimizer.
    muon: Optional[MuonSettings] = None
    # LoRA+ (adapter=lora / dora): the LoRA B matrices learn at this multiple of the learning rate
    # (the paper's eta_B / eta_A; it suggests 16, with a learning rate about half of plain LoRA's),
    # grouped by PEFT's create_loraplus_optimizer (which puts 1-D parameters with B); null: off.
    loraplus_lr_ratio: Optional[float] = None
    loraplus_lr_embedding: float = 1e-6  # LoRA+: the learning rate of LoRA embedding layers

    @staticmethod
    def check(opt: DictConfig) -> None:
        lr = opt.learning_rate
        if not (lr in ("auto", "find") or is_number(lr) and lr > 0):
            raise ConfigError(f"optimizer.learning_rate={lr} must be a positive number, auto (the "
                              "adapter method's default) or find (an LR range test).")
        if opt.fused not in ("auto", True, False):
            raise ConfigError(f"optimizer.fused={opt.fused} must be auto, true or false.")
        if opt.betas is not None and (len(opt.betas) != 2 or not all(0.0 <= b < 1.0 for b in opt.betas)):
            raise ConfigError(f"optimizer.betas={list(opt.betas)} must be two numbers in [0, 1), "
                              "e.g. [0.9,0.999].")
        if opt.weight_decay < 0:
            raise ConfigError(f"optimizer.weight_decay={opt.weight_decay} must be 0 or more.")
        OptimizerConfig._check_projection(opt)
        OptimizerConfig._check_muon(opt)
        ratio = opt.loraplus_lr_ratio
        if ratio is not None and not (is_number(ratio) and ratio > 0):
            raise ConfigError(f"optimizer.loraplus_lr_ratio={ratio} must be a positive number (LoRA+'s "
                              "B-matrix learning rate over A's, e.g. 16), or null for plain LoRA.")
        if not (is_number(opt.loraplus_lr_embedding) and opt.loraplus_lr_embedding > 0):
            raise ConfigError(f"optimizer.loraplus_lr_embedding={opt.loraplus_lr_embedding} must be a "
                              "positive number.")
        if opt.blocks is not None:
            _check_nested(opt.blocks, BlockCoordinate, "optimizer.blocks")
            if opt.blocks.switch_block_every < 1:
                raise ConfigError(f"optimizer.blocks.switch_block_every={opt.blocks.switch_block_every} "
                                  "must be at least 1 (optimizer steps per block).")
            if opt.projection is not None:
                raise ConfigError("optimizer.blocks (BAdam) and optimizer.projection (GaLore / APOLLO) "
                                  "cannot be combined; choose optimizer=badam, galore or apollo.")

    @staticmethod
    def _check_muon(opt: DictConfig) -> None:
        """optimizer.muon and the Muon target go together."""
        is_muon = str(opt._target_) == MUON_TARGET
        if opt.muon is None:
            if is_muon:
                raise ConfigError(f"optimizer._target_={MUON_TARGET} needs optimizer.muon (its settings); "
                                  "choose optimizer=muon, which sets it.")
            return
        if not is_muon:
            raise ConfigError(f"optimizer.muon is read by optimizer=muon only, not {opt._target_}, which "
                              "would ignore it; choose optimizer=muon, or set optimizer.muon=null.")
        _check_nested(opt.muon, MuonSettings, "optimizer.muon")
        if opt.muon.ns_steps < 1:
            raise ConfigError(f"optimizer.muon.ns_steps={opt.muon.ns_steps} must be at least 1.")
        if not 0.0 <= opt.muon.momentum < 1.0:
            raise ConfigError(f"optimizer.muon.momentum={opt.muon.momentum} must be in [0, 1).")

    @staticmethod
    def _check_projection(opt: DictConfig) -> None:
        """optimizer.projection and a `_target_` that reads it go together."""
        package = str(opt._target_).split(".")[0]
        extra = LOW_RANK_OPTIMIZER_PACKAGES.get(package)
        p = opt.projection
        if p is None:
            if extra is not None:
                raise ConfigError(f"optimizer._target_={opt._target_} needs optimizer.projection (its "
                                  "low-rank settings); choose optimizer=galore or apollo, which set it.")
            return
        if extra is None:
            raise ConfigError(f"optimizer.projection is read by GaLore / APOLLO optimizers only, not "
                              f"{opt._target_}, which would ignore it; choose optimizer=galore or "
                              "apollo, or set optimizer.projection=null.")
        _check_nested(p, GradientProjection, "optimizer.projection")
        for key in ("rank", "update_proj_gap"):
            if p[key] < 1:
                raise ConfigError(f"optimizer.projection.{key}={p[key]} must be at least 1.")
        if not p.scale > 0:
            raise ConfigError(f"optimizer.projection.scale={p.scale} must be positive.")
        for key in ("proj", "scale_type"):
            if key in extra and p[key] is None:
                raise ConfigError(f"optimizer.projection.{key} must be set for {opt._target_}, "
                                  f"e.g. optimizer=apollo.")
            if key not in extra and p[key] is not None:
                raise ConfigError(f"optimizer.projection.{key} is an APOLLO setting, not read by "
                                  f"{opt._target_}; remove it.")

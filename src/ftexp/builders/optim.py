"""Optimizers over the trainable parameters (the `optimizer` group's `_target_` class), and the
learning-rate defaults that go with them. Some optimizers need the model's structure, not just its
parameters: GaLore / APOLLO read a low-rank projection from the parameter group of the weights it
applies to (`optimizer.projection`), BAdam wraps the `_target_` optimizer in a block-coordinate
one (`optimizer.blocks`), both here; Muon (builders/muon.py) and Adam-mini (builders/adam_mini.py)
split the parameters by role and are dispatched to by their `_target_`."""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import Any

import torch
from torch import nn

from ftexp.builders.adam_mini import ADAM_MINI_WIRED, adam_mini, is_adam_mini
from ftexp.builders.muon import ADAMW_PART_KEYS, is_muon, muon_with_adamw, require_muon
from ftexp.builders.param_groups import parameter_groups, skips_decay, transformer_block_names
from ftexp.builders.targets import check_node, instantiate_node, parameters
from ftexp.config.adapter import ADAPTERS
from ftexp.config.optimizer import LOW_RANK_OPTIMIZER_PACKAGES
from ftexp.config.scheduler import SchedulerConfig
from ftexp.runs.errors import ConfigError

# Keys of the optimizer group that ftexp reads itself; every other key is the target's argument.
_FTEXP_KEYS = ("learning_rate", "weight_decay", "fused", "projection", "blocks", "muon",
               "loraplus_lr_ratio", "loraplus_lr_embedding")
# Arguments ftexp passes: the parameter groups and the resolved learning rate.
_WIRED = ("params", "lr")

LR_SCALING_RULES = SchedulerConfig.CHOICES["learning_rate_scaling"]

# Precisions that scale the loss (fp16's GradScaler); Lightning 2.x still accepts the legacy "16".
_SCALED_PRECISIONS = frozenset({"16-mixed", "16"})


def projected_weights(model: nn.Module, projection: dict[str, Any]) -> list[tuple[str, nn.Parameter]]:
    """The trainable Linear weights the low-rank projection applies to: those inside the
    transformer blocks (attention, MLP) or in modules named by target_modules, whose smaller side
    exceeds the rank (projecting a smaller one saves nothing)."""
    targets = projection.get("target_modules")
    blocks = None if targets else tuple(f"{b}." for b in transformer_block_names(model))
    chosen = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or weight is None or not weight.requires_grad:
            continue
        named = any(t in name for t in targets) if targets else name.startswith(blocks)
        if named and min(weight.shape) > projection["rank"]:
            chosen.append((f"{name}.weight", weight))
    return chosen


def _low_rank_groups(model: nn.Module, settings: dict[str, Any]) -> list[dict]:
    """Parameter groups for GaLore / APOLLO: the projected weights in a group carrying the
    projection keys their optimizers read, everything else as parameter_groups does."""
    projection = settings["projection"]
    package = settings["_target_"].split(".")[0]
    chosen = projected_weights(model, projection)
    if not chosen:
        sides = [min(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)]
        raise ConfigError(f"optimizer.projection.rank={projection['rank']} leaves no weight to project: "
                          f"the chosen Linear weights' smaller side is at most {max(sides, default=0)}; "
                          "lower the rank, or name other modules in optimizer.projection.target_modules.")
    keys = ("rank", "update_proj_gap", "scale", "proj_type", *LOW_RANK_OPTIMIZER_PACKAGES[package])
    wd = settings.get("weight_decay", 0.0)
    groups = parameter_groups(model, wd, exclude=frozenset(id(p) for _, p in chosen))
    projected = {"params": [p for _, p in chosen], "weight_decay": wd,
                 **{k: projection[k] for k in keys}}
    return [g for g in groups if g["params"]] + [projected]


def _allow_projector_checkpoints(package: str) -> None:
    """GaLore / APOLLO keep their projector objects in the optimizer state; resume checkpoints
    load with weights_only=True, which accepts those classes only once they are allowlisted."""
    if package == "galore_torch":
        from galore_torch.galore_projector import GaLoreProjector
        torch.serialization.add_safe_globals([GaLoreProjector])
    elif package == "apollo_torch":
        from apollo_torch.random_projector import GradientProjector
        from apollo_torch.svd_projector import GaLoreProjector as APOLLOSVDProjector
        torch.serialization.add_safe_globals([GradientProjector, APOLLOSVDProjector])


def _target_node(settings: dict[str, Any]) -> dict[str, Any]:
    """The node handed to the target: its own keys, without ftexp's and without nulls (a null
    betas / eps means "not an argument of this optimizer")."""
    return {k: v for k, v in settings.items() if k not in _FTEXP_KEYS and v is not None}


def check_optimizer_node(settings: dict[str, Any]) -> None:
    """Before the model loads: the target imports and takes the node's keys."""
    node = _target_node(settings)
    if is_muon(settings):
        require_muon()
        node = {k: v for k, v in node.items() if k not in ADAMW_PART_KEYS}  # the AdamW part's
    if is_adam_mini(settings):
        if settings.get("fused") is True:
            raise ConfigError("optimizer.fused=true: Adam-mini has no fused kernel; "
                              "set optimizer.fused=auto.")
        check_node(node, "optimizer", wired=ADAM_MINI_WIRED)
        return
    target = check_node(node, "optimizer", wired=_WIRED)
    if settings.get("fused") is True and "fused" not in parameters(target) and not is_muon(settings):
        raise ConfigError(f"optimizer.fused=true: {settings['_target_']} has no fused kernel; "
                          "set optimizer.fused=auto.")
    if settings.get("projection") is not None:
        _allow_projector_checkpoints(settings["_target_"].split(".")[0])
    if settings.get("blocks") is not None and importlib.util.find_spec("badam") is None:
        raise ConfigError("optimizer.blocks (BAdam) needs the package 'badam', which is not installed; "
                          "run: pip install 'ftexp[badam]'.")


def build_optimizer(model: nn.Module, settings: dict[str, Any], learning_rate: float,
                    fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer group's target over the trainable parameters of `model`; weight decay is
    per parameter group (see parameter_groups). `fused` only where the target takes it."""
    if settings.get("loraplus_lr_ratio") is not None:
        return _loraplus_optimizer(model, settings, learning_rate, fused)
    if is_muon(settings):
        return muon_with_adamw(model, settings, _target_node(settings), learning_rate, fused)
    if is_adam_mini(settings):
        return adam_mini(model, _target_node(settings), learning_rate, settings.get("weight_decay", 0.0))
    if settings.get("projection") is not None:
        _allow_projector_checkpoints(settings["_target_"].split(".")[0])
        groups = _low_rank_groups(model, settings)
    else:
        groups = parameter_groups(model, settings.get("weight_decay", 0.0))
    # `fused` reaches only targets that name it. None (not False) lets torch pick its foreach
    # kernel on GPU; fused only when asked, see use_fused_adamw for when that is safe.
    # no_deprecation_warning: GaLore's AdamW carries over transformers' "this AdamW is deprecated,
    # use torch's" warning, which does not apply to it (it reaches only targets that name it).
    optimizer = instantiate_node(_target_node(settings), "optimizer", _WIRED, params=groups,
                                 lr=learning_rate, fused=True if fused else None,
                                 no_deprecation_warning=True)
    if settings.get("blocks") is not None:
        return block_optimizer(model, optimizer, settings["blocks"], settings.get("weight_decay", 0.0))
    return optimizer


def _loraplus_optimizer(model: nn.Module, settings: dict[str, Any], learning_rate: float,
                        fused: bool) -> torch.optim.Optimizer:
    """LoRA+ (Hayou et al. 2024, arXiv:2402.12354): PEFT's create_loraplus_optimizer groups the
    parameters (A matrices and other weights at the learning rate, B matrices and 1-D parameters
    at ratio x it, LoRA embeddings at loraplus_lr_embedding) and hands the groups to the
    optimizer group's `_target_`, built as every other run's is."""
    from ftexp.builders.adapter import import_peft

    import_peft()
    from peft.optimizers import create_loraplus_optimizer

    def build(groups: list[dict], lr: float) -> torch.optim.Optimizer:
        return instantiate_node(_target_node(settings), "optimizer", _WIRED, params=groups, lr=lr,
                                fused=True if fused else None, no_deprecation_warning=True)

    return create_loraplus_optimizer(model, build, lr=learning_rate,
                                     loraplus_lr_ratio=settings["loraplus_lr_ratio"],
                                     loraplus_lr_embedding=settings["loraplus_lr_embedding"],
                                     loraplus_weight_decay=settings.get("weight_decay", 0.0))


# -- BAdam ---------------------------------------------------------------------------------------

def _blocks(model: nn.Module, blocks: dict[str, Any],
            trainable: list[tuple[str, nn.Parameter]]) -> tuple[list[list[str]], list[str]]:
    """BAdam's blocks (lists of parameter-name substrings) and the always-active names: the
    parameters outside the pretrained network (a task's new head), which would otherwise never
    train. Built here rather than by BAdam's own inference, which knows only `layers.N` names."""
    from transformers import PreTrainedModel

    roots = [n for n, m in model.named_modules() if isinstance(m, PreTrainedModel)]
    root = min(roots, key=len) if roots else ""
    head = [n for n, _ in trainable if root and not n.startswith(f"{root}.")]
    if blocks.get("block_prefixes"):
        return [list(b) for b in blocks["block_prefixes"]], head
    layers = [f"{b}." for b in transformer_block_names(model)]
    found = [[b] for b in layers]
    embeddings = [f"{n}." for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if blocks.get("include_embedding"):
        found.insert(0, embeddings)
    if blocks.get("include_lm_head"):
        rest = [n for n, _ in trainable if n not in head and not n.startswith((*layers, *embeddings))]
        if rest:
            found.append(rest)
    return found, head


@functools.cache
def _block_optimizer_class() -> type:
    from badam import BlockOptimizer

    class LightningBlockOptimizer(BlockOptimizer):
        """BlockOptimizer as Lightning drives it: Lightning hands `step` the closure that runs
        forward and backward, while BAdam reads the gradients before stepping, so the closure runs
        first. Weight decay follows parameter_groups' rule (BAdam's own decays norm weights and
        applies the optimizer's default rate). Its state dict also says which block is active and
        how far it is, so a resumed run continues that block with its moments (BAdam's own would
        restart at the first block and hand it the saved block's moments)."""

        def __init__(self, *args: Any, weight_decay: float, **kwargs: Any):
            self.ftexp_weight_decay = weight_decay  # read by the switch inside super().__init__
            self.active_block = 0
            super().__init__(*args, **kwargs)
            # BlockOptimizer binds the base optimizer's state_dict over its own; ours adds the block.
            self.state_dict = self._block_state_dict

        def _block_state_dict(self) -> dict[str, Any]:
            state = self.base_optimizer.state_dict()
            upcoming = getattr(self, "block_order", None)
            state["block_coordinate"] = {
                "active_block": self.active_block, "global_step": self.global_step,
                # random order: the blocks still to come, the next one (already drawn) last
                "block_order": None if upcoming is None else [*upcoming, self.current_block_idx]}
            return state

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            state = dict(state_dict)
            block = state.pop("block_coordinate", None)
            if block is not None:
                self.global_step = block["global_step"]
                self.current_block_idx = block["active_block"]
                if block["block_order"] is not None:
                    self.block_order = list(block["block_order"])
                self.switch_trainable_params()  # the saved block active, its fp32 copies fresh
            self.base_optimizer.load_state_dict(state)

        def step(self, closure: Any = None) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            super().step()
            return loss

        def switch_trainable_params(self, verbose: int | None = None) -> None:
            self.active_block = self.current_block_idx  # BAdam moves current_block_idx to the next
            super().switch_trainable_params(verbose=verbose)  # None: the constructor's verbosity

        def _switch_trainable_params_single_gpu(self, verbose: int | None = 1) -> None:
            super()._switch_trainable_params_single_gpu(verbose)
            decay, no_decay = self.base_optimizer.param_groups
            decay["params"], no_decay["params"] = [], []
            for index, high_precision in self.param_idx2hp.items():
                name, param = self.named_parameters_list[index]
                (no_decay if skips_decay(name, param) else decay)["params"].append(high_precision)
            decay["weight_decay"], no_decay["weight_decay"] = self.ftexp_weight_decay, 0.0

    return LightningBlockOptimizer


def block_optimizer(model: nn.Module, base: torch.optim.Optimizer, blocks: dict[str, Any],
                    weight_decay: float) -> torch.optim.Optimizer:
    """BAdam's BlockOptimizer around `base`: one block trains at a time (the others get
    requires_grad=False), with optimizer state for that block only, rebuilt at each switch."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        raise ConfigError("optimizer.blocks (BAdam) trains on one device: it changes which parameters "
                          "have gradients every few steps, which DDP cannot follow; set trainer.devices=1.")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    prefixes, always = _blocks(model, blocks, trainable)
    start = blocks.get("start_block")
    if start is not None and not 0 <= start < len(prefixes):
        raise ConfigError(f"optimizer.blocks.start_block={start} must be between 0 and {len(prefixes) - 1} "
                          f"(this model has {len(prefixes)} blocks).")
    return _block_optimizer_class()(
        base, trainable, block_prefix_list=prefixes, switch_block_every=blocks["switch_block_every"],
        start_block=start, switch_mode=blocks["switch_mode"], active_modules=always, verbose=0,
        weight_decay=weight_decay)


def auto_learning_rate(adapter_method: str) -> float:
    """Default peak learning rate for a fine-tuning method; unknown methods get the LoRA value
    since most adapters train a small number of new weights like LoRA does."""
    method = ADAPTERS.get(adapter_method, ADAPTERS["lora"])
    return method.auto_learning_rate


def scale_learning_rate(learning_rate: float, world_size: int, rule: str) -> float:
    """Scale for data-parallel training, where the global batch grows with world_size."""
    if rule == "none":
        return learning_rate
    if rule == "linear":
        return learning_rate * world_size
    if rule == "sqrt":
        return learning_rate * math.sqrt(world_size)
    raise ValueError(f"unknown learning-rate scaling rule {rule!r}; expected one of "
                     f"{', '.join(LR_SCALING_RULES)}")


# Devices where torch's AdamW has a fused kernel (CPU since torch 2.4).
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def use_fused_adamw(device_type: str, precision: str, gradient_clip_val: float | None) -> bool:
    """Fused AdamW is torch's fastest AdamW step on CUDA and on CPU, where without it torch takes
    its per-tensor Python loop (MiniLM's 22.7M parameters on 2 CPU cores: 10 ms a step instead of
    65 ms). Not fp16 mixed precision with clipping: its gradient scaler must unscale before
    clipping, and a fused step unscales inside itself (Lightning refuses that pairing). bf16
    mixed precision has no scaler: see allow_clipping_without_scaler."""
    if device_type not in FUSED_ADAMW_DEVICES:
        return False
    clipping = gradient_clip_val is not None and gradient_clip_val > 0
    return not (str(precision) in _SCALED_PRECISIONS and clipping)


def allow_clipping_without_scaler(optimizer: torch.optim.Optimizer, precision: str) -> None:
    """Lightning's MixedPrecision refuses gradient clipping for any optimizer flagged as unscaling
    gradients in its step (torch flags fused AdamW so), even under bf16-mixed, which has no
    gradient scaler: nothing is ever scaled, the flag only tells a GradScaler it may hand the step
    its scale. Cleared on this instance under scaler-free precisions only; pinned by
    tests/test_speed_knobs.py."""
    if str(precision) not in _SCALED_PRECISIONS and getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer._step_supports_amp_scaling = False

"""optimizer=muon: Muon (torch.optim.Muon; Jordan et al. 2024) for the 2-D weights inside the
transformer blocks and AdamW for everything else (embeddings, heads, norms, biases), as Muon's
authors prescribe, in one optimizer object."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ftexp.builders.param_groups import parameter_groups, transformer_block_names
from ftexp.config.optimizer import MUON_TARGET
from ftexp.runs.errors import ConfigError

# Keys of the optimizer group that belong to the AdamW part under optimizer=muon: Muon has no
# betas, and its own eps (the Newton–Schulz stabiliser) stays at torch's default.
ADAMW_PART_KEYS = ("betas", "eps")


def is_muon(settings: dict[str, Any]) -> bool:
    return settings.get("_target_") == MUON_TARGET


def require_muon() -> None:
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(f"optimizer=muon needs torch.optim.Muon, which torch {torch.__version__} lacks "
                          "(torch 2.9 added it); upgrade torch, or use optimizer=adamw.")


def muon_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable matrices Muon orthogonalises: 2-D weights inside the transformer blocks
    (attention and MLP projections, or an adapter's matrices there). Embeddings, output heads,
    norms and biases stay with AdamW."""
    try:
        blocks = tuple(f"{name}." for name in transformer_block_names(model))
    except ConfigError:
        raise ConfigError("optimizer=muon cannot find this model's transformer blocks, whose 2-D weights "
                          "it updates; use optimizer=adamw for this architecture.") from None
    chosen = [(n, p) for n, p in model.named_parameters()
              if p.requires_grad and p.ndim == 2 and n.startswith(blocks)]
    if not chosen:
        raise ConfigError("optimizer=muon found no trainable 2-D weight inside the transformer blocks "
                          "(this adapter trains vectors or prompts only); use optimizer=adamw.")
    return chosen


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer whose parameter groups are Muon's and AdamW's. Written here because
    Lightning's automatic optimization steps a single optimizer while torch's Muon takes 2-D
    matrices only; as one object, the schedule, gradient clipping and checkpoints (exact resume)
    treat both parts alike. The groups and the state are this optimizer's own, saved and loaded
    by torch's Optimizer; each step hands every part its groups and the shared state, so a load
    that replaces them is followed."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer]):
        for rule, part in parts.items():
            for group in part.param_groups:
                group["update_rule"] = rule
        self.parts = parts
        super().__init__([g for part in parts.values() for g in part.param_groups], defaults={})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for rule, part in self.parts.items():
            part.param_groups = [g for g in self.param_groups if g["update_rule"] == rule]
            part.state = self.state
            part.step()
        return loss


def muon_with_adamw(model: nn.Module, settings: dict[str, Any], target_node: dict[str, Any],
                    learning_rate: float, fused: bool) -> MuonWithAdamW:
    """Muon over muon_parameters (decayed at optimizer.weight_decay) with optimizer.muon's
    settings (and any other argument of the target node), AdamW over the rest (decay as
    parameter_groups rules, optimizer.betas / eps, fused where asked), both at `learning_rate`:
    with Muon's adjust_lr_fn=match_rms_adamw (Moonshot's scaling, optimizer=muon's default) one
    learning rate and schedule serve both."""
    require_muon()
    muon_args = {**{k: v for k, v in target_node.items() if k != "_target_" and k not in ADAMW_PART_KEYS},
                 **settings["muon"]}
    matrices = muon_parameters(model)
    weight_decay = settings.get("weight_decay", 0.0)
    parts: dict[str, torch.optim.Optimizer] = {"muon": torch.optim.Muon(
        [p for _, p in matrices], lr=learning_rate, weight_decay=weight_decay, **muon_args)}
    rest = [g for g in parameter_groups(model, weight_decay, exclude=frozenset(id(p) for _, p in matrices))
            if g["params"]]
    if rest:  # an adapter may train block matrices only
        adamw_args = {k: settings[k] for k in ADAMW_PART_KEYS if settings.get(k) is not None}
        if "betas" in adamw_args:
            adamw_args["betas"] = tuple(adamw_args["betas"])
        parts["adamw"] = torch.optim.AdamW(rest, lr=learning_rate, fused=True if fused else None,
                                           **adamw_args)
    return MuonWithAdamW(parts)

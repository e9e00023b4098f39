"""How the optimizers split a model's trainable parameters: by weight decay, and by transformer
block (the unit GaLore / APOLLO project, BAdam switches and Muon orthogonalises inside)."""

from __future__ import annotations

import torch
from torch import nn

from ftexp.runs.errors import ConfigError


def skips_decay(name: str, param: torch.Tensor) -> bool:
    """Decaying biases and normalisation gains only shrinks what should stay free."""
    return param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


def parameter_groups(model: nn.Module, weight_decay: float,
                     exclude: frozenset[int] = frozenset()) -> list[dict]:
    """Trainable parameters by weight decay; `exclude`: ids of parameters grouped elsewhere."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in exclude:
            continue
        (no_decay if skips_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def transformer_block_names(model: nn.Module) -> list[str]:
    """Qualified names of the transformer blocks in `model` (model.layers.0, …): the ModuleList
    as long as the architecture is deep (its config's num_hidden_layers)."""
    depth = next((m.config.num_hidden_layers for m in model.modules()
                  if isinstance(getattr(getattr(m, "config", None), "num_hidden_layers", None), int)), None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return [f"{name}.{i}" if name else str(i) for i in range(depth)]
    raise ConfigError("cannot find the transformer blocks of this model to split the optimizer by; "
                      "name them: optimizer.projection.target_modules=[...] (GaLore / APOLLO) or "
                      "optimizer.blocks.block_prefixes=[[...],...] (BAdam).")

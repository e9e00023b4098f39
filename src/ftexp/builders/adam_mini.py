"""optimizer=adam_mini: Adam-mini (Zhang et al. 2024, the `adam-mini` package) keeps one second
moment per attention head, per output neuron or per block instead of one per weight, so its state
is about half of AdamW's. It partitions the weights by their names and the attention shape, which
it reads here from the model's config."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ftexp.config.optimizer import ADAM_MINI_TARGET
from ftexp.runs.errors import ConfigError

# Arguments ftexp fills in from the model: the parameters by name and the attention shape.
ADAM_MINI_WIRED = ("named_parameters", "lr", "dim", "n_heads", "n_kv_heads", "verbose")


def is_adam_mini(settings: dict[str, Any]) -> bool:
    return settings.get("_target_") == ADAM_MINI_TARGET


def attention_shape(model: nn.Module) -> dict[str, int]:
    """dim, n_heads and n_kv_heads of the model's attention, from the first transformers config
    found on it (config attribute maps make hidden_size / num_attention_heads universal)."""
    configs = (getattr(m, "config", None) for m in model.modules())
    config = next((c for c in configs if isinstance(getattr(c, "num_attention_heads", None), int)), None)
    if config is None:
        raise ConfigError("optimizer=adam_mini partitions the weights by attention head, but this model "
                          "has no transformers config naming its heads; use optimizer=adamw.")
    heads = config.num_attention_heads
    return {"dim": config.hidden_size, "n_heads": heads,
            "n_kv_heads": getattr(config, "num_key_value_heads", None) or heads}


def adam_mini(model: nn.Module, target_node: dict[str, Any], learning_rate: float,
              weight_decay: float) -> torch.optim.Optimizer:
    """Adam-mini over the trainable parameters, decayed at `weight_decay` (it leaves norms and
    biases undecayed itself), the group's other keys (betas, eps) passed as they are."""
    from adam_mini import Adam_mini

    args = {k: v for k, v in target_node.items() if k != "_target_"}
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = Adam_mini(named, lr=learning_rate, weight_decay=weight_decay, verbose=False,
                          **attention_shape(model), **args)
    _vectors_off_matrix_paths(optimizer)
    return optimizer


def _vectors_off_matrix_paths(optimizer: torch.optim.Optimizer) -> None:
    """Adam-mini sends every parameter whose name holds one of its keywords (embed, output, value,
    mlp…) down a per-head or per-neuron path that needs a matrix, so a vector there fails: BERT's
    `attention.output.LayerNorm.weight`, `embeddings.LayerNorm.weight`. Such vectors go down its
    plain-Adam path (the one it takes for biases) instead; norms named otherwise keep its
    one-rate-per-block path."""
    matrix_words = (*optimizer.embd_names, *optimizer.output_names, *optimizer.wqk_names,
                    *optimizer.wv_names, *optimizer.attn_proj_names, *optimizer.mlp_names)
    adam_word = next(iter(optimizer.adam_block_names))
    for group in optimizer.param_groups:
        name = group["name"]
        if (group["params"][0].ndim < 2 and not any(w in name for w in optimizer.adam_block_names)
                and any(w in name for w in matrix_words)):
            group["name"] = f"{name}.{adam_word}"

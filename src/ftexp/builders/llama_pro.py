"""adapter=llama_pro: LLaMA Pro's block expansion (Wu et al. 2024, arXiv:2401.02415). Copies of
the decoder's blocks are inserted evenly, one after every len(layers) / num_expand_layers
originals, with their output projections (attention's o_proj, the MLP's down_proj) zeroed: in a
pre-norm decoder each copy then adds nothing to the residual stream, so the expanded model
computes what the original did until training moves the copies, and only the copies train."""

from __future__ import annotations

import copy

from torch import nn

from ftexp.runs.errors import ConfigError

# Decoders whose blocks are pre-norm with self_attn.o_proj and mlp.down_proj closing each branch,
# so a copy with those zeroed is the identity (post-norm models such as BERT are not).
LLAMA_PRO_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")
# The Linear layers that write a block's two branches back into the residual stream.
_BRANCH_OUTPUTS = ("self_attn.o_proj", "mlp.down_proj")


def check_llama_pro_fits(model_type: str) -> None:
    if model_type not in LLAMA_PRO_MODEL_TYPES:
        raise ConfigError(f"adapter=llama_pro inserts identity copies of pre-norm decoder blocks, which "
                          f"model type '{model_type}' does not have; it works on "
                          f"{', '.join(LLAMA_PRO_MODEL_TYPES)}. Use adapter=freeze or lora here.")


def _blocks(backbone: nn.Module) -> nn.ModuleList:
    depth = backbone.config.num_hidden_layers
    stacks = [m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if not stacks:
        raise ConfigError("adapter=llama_pro cannot find this model's decoder blocks.")
    return stacks[0]


def _identity_copy(block: nn.Module) -> nn.Module:
    """`block` copied with the output projections of its attention and MLP branches zeroed."""
    new = copy.deepcopy(block)
    for name in _BRANCH_OUTPUTS:
        linear = new.get_submodule(name)
        linear.weight.data.zero_()
        if linear.bias is not None:
            linear.bias.data.zero_()
    return new


def expand_blocks(backbone: nn.Module, num_expand_layers: int) -> list[int]:
    """Insert `num_expand_layers` identity copies into the backbone's block stack, in place, and
    return the new blocks' indices. The config's num_hidden_layers (and layer_types, where the
    architecture has them) and every attention's layer_idx (its KV-cache slot) follow."""
    blocks = _blocks(backbone)
    depth = len(blocks)
    if not 0 < num_expand_layers <= depth or depth % num_expand_layers:
        divisors = ", ".join(str(d) for d in range(1, depth + 1) if depth % d == 0)
        raise ConfigError(f"adapter.num_expand_layers={num_expand_layers} must divide the model's {depth} "
                          f"layers (a copy after every depth / num_expand_layers blocks): one of {divisors}.")
    for name in _BRANCH_OUTPUTS:
        if not isinstance(getattr(blocks[0].get_submodule(name), "weight", None), nn.Parameter):
            raise ConfigError(f"adapter=llama_pro needs each block's {name} as a plain Linear layer.")
    every = depth // num_expand_layers
    layer_types = getattr(backbone.config, "layer_types", None)
    expanded, types, new = [], [], []
    for i, block in enumerate(blocks):
        expanded.append(block)
        types.append(layer_types[i] if layer_types else None)
        if (i + 1) % every == 0:
            new.append(len(expanded))
            expanded.append(_identity_copy(block))
            types.append(types[-1])
    for index, block in enumerate(expanded):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
    del blocks[:]  # refilled in place: the container (and its name in the model) stays
    blocks.extend(expanded)
    backbone.config.num_hidden_layers = len(expanded)
    if layer_types:
        backbone.config.layer_types = types
    return new


def train_new_blocks_only(backbone: nn.Module, new_blocks: list[int]) -> None:
    """Freeze everything but the inserted blocks (adapter.trainable_patterns may add more)."""
    backbone.requires_grad_(False)
    blocks = _blocks(backbone)
    for index in new_blocks:
        blocks[index].requires_grad_(True)

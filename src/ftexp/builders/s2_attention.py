"""model.shift_short_attention: LongLoRA's shifted sparse attention, S²-Attn (Chen et al. 2024,
arXiv:2309.12307), registered as an attention implementation of transformers' AttentionInterface
(no model class is patched). In training, each sequence is cut into 1 / s2_group_size_ratio
groups (LongLoRA's 1/4: four) and every token attends causally within its group; half the
heads see the groups shifted by half a group, so information flows between neighbouring groups.
Evaluation and generation (the module in eval mode, or a KV cache) use full causal attention
through transformers' sdpa, as LongLoRA prescribes: the trained model is an ordinary one."""

from __future__ import annotations

import functools
from typing import Any

import torch

from ftexp.runs.errors import ConfigError

S2_ATTENTION = "ftexp_s2"
# Llama-family decoders, whose attention goes through ALL_ATTENTION_FUNCTIONS with (batch,
# heads, length, head_dim) tensors and num_key_value_groups for GQA.
S2_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def check_s2_fits(model_type: str) -> None:
    if model_type not in S2_MODEL_TYPES:
        raise ConfigError(f"model.shift_short_attention (LongLoRA S²-Attn) is wired for the Llama family "
                          f"({', '.join(S2_MODEL_TYPES)}), not model type '{model_type}'; set "
                          "model.shift_short_attention=false.")


def group_layout(length: int, ratio: float) -> tuple[int, int]:
    """(groups, tokens per group) for a sequence: 1 / ratio groups of ratio × length tokens, the
    last group completed with masked padding when the length does not divide."""
    groups = max(1, round(1 / ratio))
    return groups, -(-length // groups)


def s2_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The AttentionInterface function: (batch, heads, length, head_dim) tensors in, (batch,
    length, heads, head_dim) out, as transformers' sdpa_attention_forward."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    length = query.shape[2]
    ratio = getattr(module, "s2_group_size_ratio", None)
    if ratio is None or not module.training or key.shape[2] != length:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups, size = group_layout(length, ratio)
    if groups == 1:  # one group is ordinary causal attention: nothing to shift
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    repeats = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, repeats), repeat_kv(value, repeats)
    batch, heads, _, dim = query.shape
    # Keys that are not padding: those some query may attend to (all of them without a mask).
    valid = (torch.ones(batch, length, dtype=torch.bool, device=query.device) if attention_mask is None
             else attention_mask[:, 0].bool().any(dim=1) if attention_mask.dtype == torch.bool
             else (attention_mask[:, 0] > torch.finfo(attention_mask.dtype).min).any(dim=1))
    padded = groups * size
    if padded > length:  # complete the last group with keys nobody may attend to
        extra = padded - length
        query, key, value = (torch.nn.functional.pad(x, (0, 0, 0, extra)) for x in (query, key, value))
        valid = torch.nn.functional.pad(valid, (0, extra), value=False)
    half, shift = heads // 2, size // 2
    valid = valid[:, None, :].expand(batch, heads, padded).clone()

    def shifted(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, half:] = x[:, half:].roll(-shift, dims=2)
        return x

    query, key, value, valid = shifted(query), shifted(key), shifted(value), shifted(valid)

    def grouped(x: torch.Tensor) -> torch.Tensor:  # (b, h, padded, …) → (b, h, groups, size, …)
        return x.reshape(batch, heads, groups, size, *x.shape[3:])

    causal = torch.ones(size, size, dtype=torch.bool, device=query.device).tril()
    # A query may always see itself, so a group made only of padding has no empty row (NaN).
    mask = (causal & grouped(valid)[..., None, :]) | torch.eye(size, dtype=torch.bool, device=query.device)
    out = torch.nn.functional.scaled_dot_product_attention(
        grouped(query), grouped(key), grouped(value), attn_mask=mask, dropout_p=dropout, scale=scaling)
    out = out.reshape(batch, heads, padded, dim)
    out[:, half:] = out[:, half:].roll(shift, dims=2)
    return out[:, :, :length].transpose(1, 2).contiguous(), None


@functools.cache
def register_s2_attention() -> str:
    """S²-Attn under its name in transformers' attention and mask interfaces (the mask is sdpa's:
    evaluation runs sdpa, and training reads the padding from it)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(S2_ATTENTION, s2_attention)
    AttentionMaskInterface.register(S2_ATTENTION, sdpa_mask)
    return S2_ATTENTION


def enable_s2_attention(model: torch.nn.Module, ratio: float) -> None:
    """Train `model` with S²-Attn at group ratio `ratio` (its attention modules carry the ratio;
    nothing is written into the model's config, so a saved model loads as an ordinary one)."""
    check_s2_fits(getattr(model.config, "model_type", ""))
    model.set_attn_implementation(register_s2_attention())
    for attention in model.modules():
        if type(attention).__name__.endswith("Attention") and hasattr(attention, "o_proj"):
            attention.s2_group_size_ratio = ratio

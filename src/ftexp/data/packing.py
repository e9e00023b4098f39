"""Packing: several tokenized samples per row, kept apart by position ids.

Each sample's position ids restart at 0. Given position ids and no 2-D attention mask,
transformers builds a block-diagonal causal mask from the restarts (sdpa / eager / flex) or
runs variable-length flash attention, so a token never attends to another sample. The first
label of every sample is -100: the previous sample's last token must not learn to predict it.
"""

from __future__ import annotations

from typing import Any

from ftexp.data.targets import IGNORE
from ftexp.errors import ConfigError

# Architectures whose attention mask honours position-id restarts (transformers builds it with
# create_causal_mask from position ids); tests/test_causal_lm.py checks each one. BLOOM, for
# one, builds its ALiBi mask without position ids, so packed samples would see each other.
PACKING_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2")


def check_packing_supported(model_type: str) -> None:
    if model_type not in PACKING_MODEL_TYPES:
        raise ConfigError(f"data.packing=true is not supported for '{model_type}' models: their "
                          "attention ignores the position-id restarts that keep packed samples "
                          f"apart (supported: {', '.join(PACKING_MODEL_TYPES)}); set data.packing=false.")


def pack(samples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Greedy, in order: add samples to a row until the next one would overflow max_length."""
    rows: list[dict[str, list[int]]] = []
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for sample in samples:
        n = len(sample["input_ids"])
        if row["input_ids"] and len(row["input_ids"]) + n > max_length:
            rows.append(row)
            row = {"input_ids": [], "labels": [], "position_ids": []}
        row["input_ids"] += sample["input_ids"]
        row["labels"] += [IGNORE, *sample["labels"][1:]]
        row["position_ids"] += list(range(n))
    if row["input_ids"]:
        rows.append(row)
    return rows


def row_sample_count(row: dict[str, list[int]]) -> int:
    """Samples in an encoded row: those packed into it (each starts at position 0), else one."""
    return row["position_ids"].count(0) if "position_ids" in row else 1


def pad_batch(features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch. Unpacked rows get an attention mask; packed rows (with position ids)
    get none, and their padding is one more "sample" whose positions restart at 0.

    Either way the batch says what it holds, per row, for throughput counts: `row_samples` (the
    samples packed into the row, or 1) and `row_tokens` (its tokens before padding). A packed
    batch's padding is otherwise indistinguishable from a sample, and its rows are not samples."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    packed = "position_ids" in features[0]
    batch["position_ids" if packed else "attention_mask"] = []
    for f in features:
        n, pad = len(f["input_ids"]), width - len(f["input_ids"])
        batch["input_ids"].append(f["input_ids"] + [pad_id] * pad)
        batch["labels"].append(f["labels"] + [IGNORE] * pad)
        if packed:
            batch["position_ids"].append(f["position_ids"] + list(range(pad)))
        else:
            batch["attention_mask"].append([1] * n + [0] * pad)
    out = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    out["row_samples"] = torch.tensor([row_sample_count(f) for f in features], dtype=torch.long)
    out["row_tokens"] = torch.tensor([len(f["input_ids"]) for f in features], dtype=torch.long)
    return out

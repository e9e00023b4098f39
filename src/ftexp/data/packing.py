"""Packing: several tokenized samples per row, kept apart by position ids.

Each sample's position ids restart at 0. Given position ids and no 2-D attention mask,
transformers builds a block-diagonal causal mask from the restarts (sdpa / eager / flex) or
runs variable-length flash attention, so a token never attends to another sample. The first
label of every sample is -100: the previous sample's last token must not learn to predict it.
"""

from __future__ import annotations

import bisect
from typing import Any

from ftexp.data.targets import IGNORE
from ftexp.runs.errors import ConfigError

# Architectures whose attention mask honours position-id restarts (transformers builds it with
# create_causal_mask from position ids); tests/test_causal_lm.py checks each one. BLOOM, for
# one, builds its ALiBi mask without position ids, so packed samples would see each other.
PACKING_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2")
# Names the packing algorithm in the tokenized-data cache key: packed rows cached by another
# algorithm are not reused.
PACKING_ALGORITHM = "best_fit_decreasing"


def check_packing_supported(model_type: str) -> None:
    if model_type not in PACKING_MODEL_TYPES:
        raise ConfigError(f"data.packing=true is not supported for '{model_type}' models: their "
                          "attention ignores the position-id restarts that keep packed samples "
                          f"apart (supported: {', '.join(PACKING_MODEL_TYPES)}); set data.packing=false.")


def pack(samples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Best-fit decreasing: longest sample first, each into the fullest row it still fits in (a new
    row when none has room). Fewer rows than filling rows in order, so fewer padded tokens: the
    shipped CodeAlpaca sample's 400 training samples (49,386 tokens) fill 99 rows of 512 where
    in-order filling needs 111 (no packing can use fewer than 97).
    A row keeps its samples in their original order and rows follow their first sample, so the
    result does not depend on how ties in length fall."""
    bins = sorted(sorted(members) for members in best_fit_decreasing(
        [len(s["input_ids"]) for s in samples], max_length))
    return [_concatenate([samples[i] for i in members]) for members in bins]


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity` (a longer item gets a bin of
    its own). Hand-written: a dozen lines with `bisect`, where the packages that offer it work on
    their own dataset types (TRL's pack_dataset) or pack by first fit (binpacking)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    open_bins: list[tuple[int, int]] = []  # (room left, bin number), kept sorted by room
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(open_bins, (n, -1))  # the tightest bin with room for n
        if at < len(open_bins):
            room, b = open_bins.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(open_bins, (room - n, b))
    return bins


def _concatenate(members: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for sample in members:
        n = len(sample["input_ids"])
        row["input_ids"] += sample["input_ids"]
        row["labels"] += [IGNORE, *sample["labels"][1:]]
        row["position_ids"] += list(range(n))
    return row


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
    # Per-token tensors a task attached to its rows (the teacher's cached hidden states: (tokens,
    # dim) each), zero-padded to the batch's width like the ids.
    for key in (k for k, v in features[0].items() if isinstance(v, torch.Tensor)):
        out[key] = torch.stack([torch.nn.functional.pad(f[key], (0, 0, 0, width - len(f[key])))
                                for f in features])
    out["row_samples"] = torch.tensor([row_sample_count(f) for f in features], dtype=torch.long)
    out["row_tokens"] = torch.tensor([len(f["input_ids"]) for f in features], dtype=torch.long)
    return out

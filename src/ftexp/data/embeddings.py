"""Cached encoder embeddings (`data.cache_encoder_embeddings`): with a frozen encoder, its forward
pass moves into preprocessing. The encoder embeds every split once; the pooled vectors are
stored in the content cache, and training, validation and test run the head on them. Later runs
with the same key — same data, tokenizer, encoding settings, weights, pooling, dtype and
precision — do no encoder pass at all. Predict and export still load the full encoder, so the
saved model works on raw text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from rich.progress import track
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ftexp.data.cache import FORMAT_VERSION, digest, directory_digest
from ftexp.runs.paths import resolve_model_path

log = logging.getLogger(__name__)


def model_fingerprint(model: dict[str, Any], memo_dir: str | Path | None) -> str:
    """Identity of the weights a model config loads: the digest of its files for a local or
    cached Hub model, the architecture config for a random-init one."""
    if model.get("random_init") is not None:
        import transformers

        # Rebuilt from a fixed seed (builders/backbone.py); init code may change across versions.
        return digest(model["random_init"], torch.__version__, transformers.__version__)
    source = resolve_model_path(model["name_or_path"])
    if not Path(source).is_dir():
        from huggingface_hub import snapshot_download

        source = snapshot_download(source, revision=model.get("revision"), local_files_only=True)
    return directory_digest(source, memo_dir)


def starting_weights_key(model: dict[str, Any], quant: dict[str, Any], precision: str,
                         memo_dir: str | Path | None) -> str:
    """Identity of the network a run starts from, as far as its outputs go: the base weights'
    files (or random-init architecture), the earlier run's checkpoint under model.init_from,
    dtype, attention implementation, quantization and precision."""
    from ftexp.builders.init_from import init_from_fingerprint

    numerics = {k: model.get(k) for k in ("dtype", "attn_implementation")}
    return digest(FORMAT_VERSION, model_fingerprint(model, memo_dir), init_from_fingerprint(model, memo_dir),
                  numerics, quant, precision)


def embedding_key(encoding_key: str, model: dict[str, Any], quant: dict[str, Any], pooling: str,
                  precision: str, memo_dir: str | Path | None) -> str:
    """Everything the stored vectors depend on. `encoding_key` already covers the data file
    contents, tokenizer, text columns, max length and splits (see RowsDataModule)."""
    return digest("embeddings", encoding_key, starting_weights_key(model, quant, precision, memo_dir),
                  pooling)


@torch.inference_mode()
def embed_rows(network: nn.Module, loader: DataLoader, device: torch.device,
               autocast_dtype: torch.dtype | None, what: str) -> torch.Tensor:
    """Pooled embeddings of every row the loader yields, in order, as float32 on the CPU."""
    was_training = network.training
    network.eval()
    chunks = []
    for batch in track(loader, description=f"embedding {what}", transient=True):
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")
                  if k in batch}
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            chunks.append(network.embed(**inputs).float().cpu())
    network.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def pass_through(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate for EmbeddingRows: its batches come out whole from `__getitems__`."""
    return batch


class EmbeddingRows(Dataset):
    """Stored embeddings with their targets. The DataLoader asks for whole batches through
    `__getitems__`, so a batch is two tensor slices rather than a per-row collate, which would
    cost more than the head's own step."""

    def __init__(self, embeddings: torch.Tensor, labels: torch.Tensor):
        if len(embeddings) != len(labels):
            raise ValueError(f"{len(embeddings)} embeddings for {len(labels)} labels")
        self.embeddings = embeddings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"embeddings": self.embeddings[i], "labels": self.labels[i]}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices)
        return {"embeddings": self.embeddings[index], "labels": self.labels[index]}

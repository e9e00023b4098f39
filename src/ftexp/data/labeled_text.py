"""DataModule for labeled text (classification, multi-label, regression):
read → split → encode targets → tokenize → padded batches."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch
from transformers import DataCollatorWithPadding

from ftexp.config.data import DataConfig
from ftexp.data.embeddings import EmbeddingRows, pass_through
from ftexp.data.encoding import check_text_columns, encode
from ftexp.data.rows import Rows, RowsDataModule
from ftexp.data.splits import split_frame
from ftexp.data.targets import fit_targets
from ftexp.runs.errors import DataError

log = logging.getLogger(__name__)


def _summary(target: dict[str, Any]) -> str:
    if "labels" in target:
        return f"{target['kind']}, {len(target['labels'])} labels {target['labels'][:10]}"
    return f"{target['kind']}, mean {target['mean']:.4g}, std {target['std']:.4g}"


class LabeledTextDataModule(RowsDataModule):
    """`labels` says what the label column means: "classes" (lists of classes make it
    multi-label) or "number" (regression). See `ftexp.data.targets`."""

    def __init__(self, config: DataConfig, tokenizer: Any, seed: int = 42,
                 labels: str = "classes", cache_dir: str | None = None,
                 evaluate_training_set: bool = False):
        super().__init__(config, seed, DataCollatorWithPadding(tokenizer), tokenizer, cache_dir,
                         evaluate_training_set)
        self.labels = labels
        self.targets: Any = None
        self.embedding_cache: Any = None  # set when training on cached encoder embeddings

    def setup_splits(self, table: pd.DataFrame) -> None:
        cfg = self.config
        check_text_columns(table, list(cfg.text_columns), f"'{cfg.path}'")
        if cfg.label_column not in table.columns:
            raise DataError(f"label column '{cfg.label_column}' not found in '{cfg.path}'; columns are: "
                            f"{', '.join(map(str, table.columns))}. Set data.label_column.")
        frames = split_frame(table, cfg.split_column, list(cfg.split_probabilities), cfg.split_seed)
        if cfg.max_train_samples is not None and len(frames["train"]) > cfg.max_train_samples:
            frames["train"] = frames["train"].sample(n=cfg.max_train_samples, random_state=cfg.split_seed)
        self.targets = fit_targets(
            self.labels, frames["train"][cfg.label_column],
            {s: frames[s][cfg.label_column] for s in ("validation", "test")}, cfg.label_column,
            cfg.label_separator)

        encoded = self.encode_cached(lambda: {
            split: encode(self.tokenizer, frame, list(cfg.text_columns), cfg.max_length)
            for split, frame in frames.items()}, "labeled_text")
        for split, frame in frames.items():
            rows, truncated = encoded[split]
            for row, target in zip(rows, self.targets.encode(frame[cfg.label_column]), strict=True):
                row["labels"] = target
            self.datasets[split] = Rows(rows)
            if truncated:
                log.warning("%s split: %d of %d rows are longer than data.max_length=%d tokens and "
                            "are truncated.", split, truncated, len(frame), cfg.max_length)
        self.frames = frames
        log.info("data: %s — train %d, validation %d, test %d rows; targets: %s",
                 cfg.path, *(len(frames[s]) for s in ("train", "validation", "test")),
                 _summary(self.targets.describe()))

    def loss_items(self, batch: dict[str, Any]) -> int:
        return int(self.targets.trained(batch["labels"]).sum())

    def summary(self) -> dict[str, Any]:
        """What the caches did this run (for metrics.json)."""
        return {f"cache_{cache.kind}": cache.events[-1]
                for cache in (self.tokenized_cache, self.embedding_cache)
                if cache is not None and cache.events}

    def use_embeddings(self, embeddings: dict[str, torch.Tensor], cache: Any = None) -> None:
        """Serve stored encoder embeddings (and the same targets) instead of token ids; `cache`:
        the embedding cache they came from, reported in `summary`."""
        self.embedding_cache = cache
        for split, rows in self.datasets.items():
            labels = torch.tensor([row["labels"] for row in rows])
            self.datasets[split] = EmbeddingRows(embeddings[split], labels)
        self.collate = pass_through


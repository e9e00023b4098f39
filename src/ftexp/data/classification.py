"""DataModule for text classification: read → split → map labels → tokenize → padded batches."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from ftexp.config import DataConfig
from ftexp.data.encoding import check_text_columns, encode
from ftexp.data.readers import read_table
from ftexp.data.splits import split_frame
from ftexp.errors import DataError

log = logging.getLogger(__name__)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def label_vocabulary(train: pd.Series, others: dict[str, pd.Series], column: str) -> list[Any]:
    """Sorted distinct training labels; a label seen only outside training is an error."""
    if train.isna().any():
        raise DataError(f"label column '{column}' has {int(train.isna().sum())} empty cells in the "
                        "train split; fill or drop those rows.")
    labels = sorted(train.unique().tolist(), key=lambda v: (str(type(v)), v))
    if len(labels) < 2:
        raise DataError(f"the train split has a single class ({labels[0]!r}) in '{column}'; "
                        "a classifier needs at least two.")
    known = set(labels)
    for split, series in others.items():
        unseen = sorted({v for v in series.dropna().unique().tolist() if v not in known}, key=str)
        if unseen:
            raise DataError(f"labels {unseen[:5]} in the {split} split never occur in train; "
                            "re-split the data or drop those rows.")
    return labels


class ClassificationDataModule(L.LightningDataModule):
    def __init__(self, config: DataConfig, tokenizer: Any, seed: int = 42):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.seed = seed
        self.frames: dict[str, pd.DataFrame] = {}
        self.datasets: dict[str, _Rows] = {}
        self.label_names: list[Any] = []
        self.collate = DataCollatorWithPadding(tokenizer)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # idempotent: Lightning calls setup for fit and again for test
            return
        cfg = self.config
        table = read_table(cfg.path, cfg.format)
        check_text_columns(table, list(cfg.text_columns), f"'{cfg.path}'")
        if cfg.label_column not in table.columns:
            raise DataError(f"label column '{cfg.label_column}' not found in '{cfg.path}'; columns are: "
                            f"{', '.join(map(str, table.columns))}. Set data.label_column.")
        frames = split_frame(table, cfg.split_column, list(cfg.split_probabilities), cfg.split_seed)
        if cfg.max_train_samples is not None and len(frames["train"]) > cfg.max_train_samples:
            frames["train"] = frames["train"].sample(n=cfg.max_train_samples, random_state=cfg.split_seed)
        self.label_names = label_vocabulary(
            frames["train"][cfg.label_column],
            {s: frames[s][cfg.label_column] for s in ("validation", "test")}, cfg.label_column)
        label_ids = {label: i for i, label in enumerate(self.label_names)}

        for split, frame in frames.items():
            rows, truncated = encode(self.tokenizer, frame, list(cfg.text_columns), cfg.max_length)
            for row, label in zip(rows, frame[cfg.label_column].tolist(), strict=True):
                row["labels"] = label_ids.get(label, -100)  # -100: no label, ignored by loss and metrics
            self.datasets[split] = _Rows(rows)
            if truncated:
                log.warning("%s split: %d of %d rows are longer than data.max_length=%d tokens and "
                            "are truncated.", split, truncated, len(frame), cfg.max_length)
        self.frames = frames
        log.info("data: %s — train %d, validation %d, test %d rows; %d labels: %s",
                 cfg.path, *(len(frames[s]) for s in ("train", "validation", "test")),
                 len(self.label_names), self.label_names[:10])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        batch = self.config.batch_size if split == "train" else self.config.eval_batch_size
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(self.datasets[split], batch_size=batch, shuffle=shuffle,
                          collate_fn=self.collate, num_workers=self.config.num_workers,
                          generator=generator, persistent_workers=self.config.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

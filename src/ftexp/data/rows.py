"""Encoded rows as a Dataset, the DataLoader built from them, and the DataModule base that
serves the train / validation / test splits."""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class Rows(Dataset):
    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def rows_loader(rows: Rows, batch_size: int, shuffle: bool, collate: Callable, num_workers: int,
                seed: int) -> DataLoader:
    # A seeded generator makes the shuffle order a function of the run's seed alone.
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      num_workers=num_workers, generator=generator,
                      persistent_workers=num_workers > 0)


class RowsDataModule(L.LightningDataModule):
    """Loaders over the encoded splits in `self.datasets`; subclasses fill them in `setup`."""

    def __init__(self, config: Any, seed: int, collate: Callable):
        super().__init__()
        self.config = config
        self.seed = seed
        self.collate = collate
        self.datasets: dict[str, Rows] = {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        batch = self.config.batch_size if split == "train" else self.config.eval_batch_size
        return rows_loader(self.datasets[split], batch, shuffle, self.collate,
                           self.config.num_workers, self.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

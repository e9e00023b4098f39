"""Tasks that read one pooled vector per text through a linear head (classification, regression).

Subclasses say how many outputs the head has, the loss, the metrics, and how raw outputs become
predictions (probabilities, numbers) and prediction-file columns.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection

from ftexp.builders.adapter import backbone_is_frozen
from ftexp.builders.backbone import is_decoder_only
from ftexp.modeling import PooledHeadModel
from ftexp.tasks.base import FinetuneTask

log = logging.getLogger(__name__)


class PooledHeadTask(FinetuneTask):
    num_outputs: int

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.train_metrics = self.make_metrics("train/")
        self.val_metrics = self.make_metrics("val/")
        self.test_metrics = self.make_metrics("test/")

    # -- what a subclass defines ------------------------------------------------------------------

    def make_metrics(self, prefix: str) -> MetricCollection:
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor,
                       labels: torch.Tensor) -> None:
        raise NotImplementedError

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Head outputs → what users read (probabilities, numbers in the target's units)."""
        raise NotImplementedError

    def prediction_columns(self, predictions: torch.Tensor) -> dict[str, list[Any]]:
        """Predictions of many rows → the columns a predictions file adds to those rows."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------

    def build_network(self) -> nn.Module:
        t = self.hparams.task
        backbone = self.adapted_backbone()
        pooling = t["pooling"]
        if pooling == "auto":
            pooling = "last" if is_decoder_only(backbone.config) else "mean"
        log.info("pooling: %s", pooling)
        return PooledHeadModel(backbone, self.num_outputs, pooling, t["head_dropout"],
                               backbone_is_frozen(self.hparams.adapter["method"]))

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.network(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self(batch)
        loss = self.loss(outputs, batch["labels"])
        self.update_metrics(self.stage_metrics(stage), outputs.detach(), batch["labels"])
        self.log_stage(stage, loss, batch_size=batch["labels"].size(0))
        return loss, outputs

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0] + self.adapter_penalty()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_test_epoch_start(self) -> None:
        self.test_predictions: list[torch.Tensor] = []

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Kept so the run can write test predictions without a second pass over the data.
        outputs = self._step(batch, "test")[1]
        self.test_predictions.append(self.predictions(outputs).cpu())

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.predictions(self(batch))

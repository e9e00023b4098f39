"""Regression: one number per row. The head learns the z-scored target (see data/targets.py);
metrics and predictions are in the target's own units."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score

from ftexp.data.targets import Numeric
from ftexp.tasks.pooled import PooledHeadTask


class RegressionTask(PooledHeadTask):
    """Loss: MSE on the z-scored target. Metrics: `mse`, `mae`, `r2`. Rows whose target is
    empty (NaN) are left out of both."""

    num_outputs = 1

    def make_metrics(self, prefix: str) -> MetricCollection:
        return MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError(),
                                 "r2": R2Score()}, prefix=prefix)

    def _scale(self) -> tuple[float, float]:
        return self.hparams.target["mean"], self.hparams.target["std"]

    def trained(self, labels: torch.Tensor) -> torch.Tensor:
        return Numeric.trained(labels)

    def elementwise_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mean, std = self._scale()
        known = self.trained(labels)
        target = (torch.where(known, labels, mean).float() - mean) / std
        return F.mse_loss(outputs.squeeze(-1).float(), target, reduction="none") * known

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor,
                       labels: torch.Tensor) -> None:
        known = torch.isfinite(labels)
        if known.any():
            metrics.update(self.predictions(outputs)[known], labels[known].float())

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        mean, std = self._scale()
        return outputs.float().squeeze(-1) * std + mean

    def prediction_columns(self, predictions: torch.Tensor) -> dict[str, list[Any]]:
        return {"prediction": predictions.float().cpu().numpy().round(6).tolist()}

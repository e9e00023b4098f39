"""Classification: one class per row (softmax, cross-entropy) or several (sigmoids, BCE)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelExactMatch,
    MultilabelF1Score,
)

from ftexp.data.targets import IGNORE, MULTI_LABEL, MultiLabel, SingleLabel
from ftexp.tasks.pooled import PooledHeadTask


class ClassificationTask(PooledHeadTask):
    """Single-label: metrics `acc` (accuracy) and `f1_macro`; rows labelled -100 are skipped."""

    @classmethod
    def for_target(cls, target: dict[str, Any] | None) -> type[ClassificationTask]:
        return MultiLabelClassificationTask if (target or {}).get("kind") == MULTI_LABEL else cls

    def __init__(self, *args: Any, **kwargs: Any):
        target = kwargs.get("target") or {}
        self.label_names: list[Any] = list(target.get("labels", []))
        self.num_outputs = len(self.label_names)
        super().__init__(*args, **kwargs)

    def make_metrics(self, prefix: str) -> MetricCollection:
        n = self.num_outputs
        return MetricCollection(
            {"acc": MulticlassAccuracy(num_classes=n, average="micro", ignore_index=IGNORE),
             "f1_macro": MulticlassF1Score(num_classes=n, average="macro", ignore_index=IGNORE)},
            prefix=prefix)

    def trained(self, labels: torch.Tensor) -> torch.Tensor:
        return SingleLabel.trained(labels)

    def elementwise_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), labels, ignore_index=IGNORE, reduction="none")

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor,
                       labels: torch.Tensor) -> None:
        metrics.update(outputs, labels)

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=-1)

    def prediction_columns(self, predictions: torch.Tensor) -> dict[str, list[Any]]:
        probs = predictions.float().cpu().numpy()
        return {"predicted_label": [self.label_names[i] for i in probs.argmax(axis=1)],
                **self.probability_columns(probs)}

    def probability_columns(self, probs: Any) -> dict[str, list[float]]:
        return {f"prob_{name}": probs[:, j].round(6).tolist() for j, name in enumerate(self.label_names)}


class MultiLabelClassificationTask(ClassificationTask):
    """Several classes per row: one sigmoid each. `acc` is exact-match accuracy (every class of
    the row right), `f1_macro` averages per-class F1. A class is predicted at task.threshold."""

    def make_metrics(self, prefix: str) -> MetricCollection:
        n, threshold = self.num_outputs, self.hparams.task.get("threshold", 0.5)
        return MetricCollection(
            {"acc": MultilabelExactMatch(num_labels=n, threshold=threshold),
             "f1_macro": MultilabelF1Score(num_labels=n, threshold=threshold, average="macro")},
            prefix=prefix)

    def trained(self, labels: torch.Tensor) -> torch.Tensor:
        return MultiLabel.trained(labels)

    def elementwise_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs.float(), labels.float(), reduction="none")

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor,
                       labels: torch.Tensor) -> None:
        metrics.update(outputs.float().sigmoid(), labels.long())

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().sigmoid()

    def prediction_columns(self, predictions: torch.Tensor) -> dict[str, list[Any]]:
        probs = predictions.float().cpu().numpy()
        threshold = self.hparams.task.get("threshold", 0.5)
        separator = self.hparams.target.get("separator") or "|"
        predicted = [separator.join(str(name) for name, p in zip(self.label_names, row, strict=True)
                                    if p >= threshold) for row in probs]
        return {"predicted_labels": predicted, **self.probability_columns(probs)}

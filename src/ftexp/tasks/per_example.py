"""Tasks whose loss is a mean over examples (preference pairs, KTO examples) rather than over
tokens or label entries, and whose metrics are weighted means of per-batch values: the reward
model and the preference objectives share the steps and the bookkeeping here."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from ftexp.tasks.base import EVAL_STAGES, FinetuneTask

# A batch's metrics: name → (batch mean, how many examples it averages; 0: not in this batch).
Metrics = dict[str, tuple[torch.Tensor, int]]


def _key(metric: str) -> str:
    return metric.replace("/", "__")  # module names cannot hold "." and read better without "/"


class PerExampleTask(FinetuneTask):
    """Subclasses define `loss_and_metrics`; the metrics reported (val/…, test/…) are the task's
    registry entry's, each a mean over the examples of the split."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        from ftexp.tasks.registry import get_task

        self.metric_names = get_task(self.hparams.task["name"]).metrics
        self.eval_means = nn.ModuleDict({
            stage: nn.ModuleDict({_key(m): MeanMetric() for m in self.metric_names})
            for stage in (*EVAL_STAGES, "test")})

    def loss_and_metrics(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """Per-example losses, and each metric's batch mean with the number of examples it
        averages (a metric over desirable examples only counts those)."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses, metrics = self.loss_and_metrics(batch)
        count = torch.tensor(len(losses), device=losses.device)
        self.log_train_loss(losses.mean(), count, batch_idx)
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            self.log_dict({f"train/{name}": value.detach() for name, (value, n) in metrics.items() if n},
                          on_step=True, on_epoch=False)
        return self.normalized_loss(losses.sum(), count, batch) + self.adapter_penalty()

    def record(self, stage: str, losses: torch.Tensor, metrics: Metrics) -> None:
        means = self.eval_means[stage]
        means[_key("loss")].update(losses.mean(), weight=len(losses))
        for name, (value, n) in metrics.items():
            if n:
                means[_key(name)].update(value, weight=n)

    def _log_stage(self, stage: str) -> None:
        values = {}
        for name in self.metric_names:
            mean = self.eval_means[stage][_key(name)]
            if mean.update_called:
                values[f"{stage}/{name}"] = mean.compute()
            mean.reset()
        # The progress bar shows the validation loss and the monitored metric.
        shown = {"val/loss", self.hparams.task["monitor"]}
        for prog_bar in (True, False):
            part = {k: v for k, v in values.items() if (k in shown) == prog_bar}
            if part:  # compute() already gathers every rank; sync_dist only averages equal values
                self.log_dict(part, prog_bar=prog_bar, add_dataloader_idx=False, sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        self.record(EVAL_STAGES[dataloader_idx], *self.loss_and_metrics(batch))

    def on_validation_epoch_end(self) -> None:
        for stage in EVAL_STAGES:
            self._log_stage(stage)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.record("test", *self.loss_and_metrics(batch))

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

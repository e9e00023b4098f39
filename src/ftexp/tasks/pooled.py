"""Tasks that read one pooled vector per text through a linear head (classification, regression).

Subclasses say how many outputs the head has, the loss, the metrics, and how raw outputs become
predictions (probabilities, numbers) and prediction-file columns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection

from ftexp.builders.adapter import backbone_is_frozen
from ftexp.builders.backbone import is_decoder_only
from ftexp.tasks.base import EVAL_STAGES, FinetuneTask, RunParts
from ftexp.tasks.pooled_model import PooledHeadModel

log = logging.getLogger(__name__)


def pooled_head_network(task: FinetuneTask, num_outputs: int, bias: bool = True) -> PooledHeadModel:
    """The task's adapted backbone under a pooled linear head, pooled as task.pooling says (auto:
    the last non-padding token for decoders, the mean for encoders)."""
    t = task.hparams.task
    backbone = task.adapted_backbone()
    pooling = t["pooling"]
    if pooling == "auto":
        pooling = "last" if is_decoder_only(backbone.config) else "mean"
    log.info("pooling: %s", pooling)
    return PooledHeadModel(backbone, num_outputs, pooling, t["head_dropout"],
                           backbone_is_frozen(task.hparams.adapter["method"]), bias=bias)


class PooledHeadTask(FinetuneTask):
    num_outputs: int

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.train_metrics = self.make_metrics("train/")
        self.val_metrics = self.make_metrics("val/")
        self.train_eval_metrics = self.make_metrics("train_eval/")
        self.test_metrics = self.make_metrics("test/")

    # -- what a subclass defines ------------------------------------------------------------------

    def make_metrics(self, prefix: str) -> MetricCollection:
        raise NotImplementedError

    def elementwise_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss per label entry, shaped like `trained(labels)`, 0 where it is False."""
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

    @classmethod
    def from_config(cls, cfg: Any, settings: dict[str, Any], tokenizer: Any, run_dir: Path) -> RunParts:
        """Labeled text; the label column fitted on the train split decides the class (single- or
        multi-label) and goes to the checkpoint and the run's labels.json."""
        from lightning.pytorch.utilities import rank_zero_only
        from omegaconf import OmegaConf

        from ftexp.data.labeled_text import LabeledTextDataModule
        from ftexp.runs import run_dir as run_files
        from ftexp.tasks.registry import get_task

        datamodule = LabeledTextDataModule(
            OmegaConf.to_object(cfg.data), tokenizer, seed=cfg.seed, labels=get_task(cfg.task.name).labels,
            cache_dir=cfg.paths.cache_dir, evaluate_training_set=cfg.trainer.evaluate_training_set)
        datamodule.setup()  # read and check the data before spending time on the model
        target = datamodule.targets.describe()
        if rank_zero_only.rank == 0:
            run_files.write_json(run_dir / run_files.LABELS_FILE, target)
        return RunParts(datamodule, cls.for_target(target)(target=target, **settings), [])

    def summary(self) -> dict[str, Any]:
        passes = getattr(self.network, "encoder_forward_passes", None)
        return {**super().summary(), **({"encoder_forward_passes": passes} if passes is not None else {})}

    def build_network(self) -> nn.Module:
        return pooled_head_network(self, self.num_outputs)

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "embeddings" in batch:  # data.cache_encoder_embeddings: the encoder ran beforehand
            return self.network.head_outputs(batch["embeddings"])
        return self.network(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def loss_terms(self, batch: dict[str, torch.Tensor],
                   outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss summed over the batch's label entries, and how many entries count."""
        labels = batch["labels"]
        return self.elementwise_loss(outputs, labels).sum(), self.trained(labels).sum()

    def _step(self, batch: dict[str, torch.Tensor], stage: str,
              batch_idx: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self(batch)
        total, count = self.loss_terms(batch, outputs)
        self.update_metrics(self.stage_metrics(stage), outputs.detach(), batch["labels"])
        mean = total / count.clamp(min=1)
        if stage == "train":
            self.log_train_loss(mean, count, batch_idx)
        else:
            self.log(f"{stage}/loss", mean, prog_bar=stage == "val", batch_size=len(batch["labels"]),
                     add_dataloader_idx=False, sync_dist=True)  # averaged over ranks at epoch end
        return self.normalized_loss(total, count, batch), outputs

    def stage_metrics(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_metrics")

    def _log_metrics(self, stage: str) -> None:
        # Computed and logged once per epoch: handing Lightning the metric objects every step
        # costs more than a head-only step on cached embeddings.
        metrics = self.stage_metrics(stage)
        if any(m.update_called for m in metrics.values()):
            # compute() already gathers every rank's state; sync_dist only averages equal values.
            self.log_dict(metrics.compute(), prog_bar=stage == "val", add_dataloader_idx=False,
                          sync_dist=True)
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        for stage in EVAL_STAGES:
            self._log_metrics(stage)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", batch_idx)[0] + self.adapter_penalty()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        self._step(batch, EVAL_STAGES[dataloader_idx])

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def on_test_epoch_start(self) -> None:
        self.test_predictions: list[torch.Tensor] = []

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Kept so the run can write test predictions without a second pass over the data.
        outputs = self._step(batch, "test")[1]
        self.test_predictions.append(self.predictions(outputs).cpu())

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.predictions(self(batch))

    @staticmethod
    def prediction_rows(frame: Any, tokenizer: Any, cfg: Any,
                        columns: list[str] | None) -> tuple[list[dict[str, Any]], Any]:
        """A file's rows → encoded rows (its text columns, or the run's) and their collate function."""
        from transformers import DataCollatorWithPadding

        from ftexp.data.encoding import check_text_columns, encode

        columns = columns or list(cfg.data.text_columns)
        check_text_columns(frame, columns, "the input file")
        rows, _ = encode(tokenizer, frame, columns, cfg.data.max_length)
        return rows, DataCollatorWithPadding(tokenizer)

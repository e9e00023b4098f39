"""Classification task: cross-entropy on a pooled head, accuracy and macro-F1 per split."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ftexp.builders.adapter import apply_adapter, backbone_is_frozen, count_parameters
from ftexp.builders.backbone import is_decoder_only, load_backbone
from ftexp.builders.optim import build_optimizer
from ftexp.builders.quant import prepare_for_kbit_training, quantization_config
from ftexp.builders.schedulers import build_scheduler
from ftexp.modeling import SequenceClassifier

log = logging.getLogger(__name__)


def _metrics(num_labels: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {"acc": MulticlassAccuracy(num_classes=num_labels, average="micro", ignore_index=-100),
         "f1_macro": MulticlassF1Score(num_classes=num_labels, average="macro", ignore_index=-100)},
        prefix=prefix)


class ClassificationTask(L.LightningModule):
    """Holds plain dicts of the model / adapter / task / scheduler settings, so a checkpoint
    alone says how to rebuild the model (see `ftexp.predict`)."""

    def __init__(self, model: dict[str, Any], adapter: dict[str, Any], task: dict[str, Any],
                 scheduler: dict[str, Any], label_names: list[Any],
                 quant: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters()
        # With an adapter, checkpoints keep only what trains (adapter + head); the frozen rest
        # comes back from the base weights (random-init bases are rebuilt identically), so
        # loading is not strict.
        self.saves_trainable_only = adapter["method"] != "none"
        self.strict_loading = not self.saves_trainable_only
        self.label_names = list(label_names)
        self.num_labels = len(self.label_names)
        self.classifier: SequenceClassifier | None = None
        self.train_metrics = _metrics(self.num_labels, "train/")
        self.val_metrics = _metrics(self.num_labels, "val/")
        self.test_metrics = _metrics(self.num_labels, "test/")

    # Built here rather than in __init__ so sharded strategies can build it on each rank.
    def configure_model(self) -> None:
        if self.classifier is not None:
            return
        m, a, t = self.hparams.model, self.hparams.adapter, self.hparams.task
        quant = self.hparams.quant or {"method": "none"}
        backbone = load_backbone(m["name_or_path"], random_init=m.get("random_init"),
                                 dtype=m["dtype"], attn_implementation=m.get("attn_implementation"),
                                 trust_remote_code=m["trust_remote_code"], revision=m.get("revision"),
                                 quantization_config=quantization_config(quant))
        if quant["method"] != "none":
            backbone = prepare_for_kbit_training(backbone, quant.get("upcast_norms", True))
        if a["method"] == "adalora" and self._trainer is not None:
            a = {**a, "total_step": int(self.trainer.estimated_stepping_batches)}
        backbone = apply_adapter(backbone, a)
        pooling = t["pooling"]
        if pooling == "auto":
            pooling = "last" if is_decoder_only(backbone.config) else "mean"
        self.classifier = SequenceClassifier(backbone, self.num_labels, pooling,
                                             t["head_dropout"], backbone_is_frozen(a["method"]))
        self.classifier.train()  # from_pretrained returns eval mode; Lightning keeps modes as found
        trainable, total = count_parameters(self.classifier)
        self.parameter_counts = {"trainable_params": trainable, "total_params": total}
        log.info("parameters: %s trainable of %s (%.2f%%), pooling=%s", f"{trainable:,}",
                 f"{total:,}", 100 * trainable / total, pooling)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def _step(self, batch: dict[str, torch.Tensor], metrics: MetricCollection,
              stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch)
        loss = F.cross_entropy(logits, batch["labels"])
        metrics.update(logits.detach(), batch["labels"])
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True,
                 batch_size=batch["labels"].size(0))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss, logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_metrics, "train")[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    def on_test_epoch_start(self) -> None:
        self.test_probabilities: list[torch.Tensor] = []

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Kept so the run can write test predictions without a second pass over the data.
        logits = self._step(batch, self.test_metrics, "test")[1]
        self.test_probabilities.append(logits.float().softmax(dim=-1).cpu())

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch).float().softmax(dim=-1)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.hparams.adapter["method"] == "adalora":
            # AdaLoRA re-budgets ranks from the gradients, after the step and before zero_grad.
            self.classifier.backbone.base_model.update_and_allocate(self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.saves_trainable_only:
            keep = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def load_trained_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's weights; a trainable-only checkpoint must cover every trainable one."""
        result = self.load_state_dict(state_dict, strict=not self.saves_trainable_only)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing = trainable & set(result.missing_keys)
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint does not match the model: missing {sorted(missing)[:3]}, "
                               f"unexpected {sorted(result.unexpected_keys)[:3]}")

    def configure_optimizers(self) -> dict[str, Any]:
        t, s = self.hparams.task, self.hparams.scheduler
        optimizer = build_optimizer(self.classifier, t["learning_rate"], t["weight_decay"])
        scheduler = build_scheduler(optimizer, s["name"], s["warmup_fraction"],
                                    int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

"""What every task shares: backbone → k-bit preparation → adapter, the trainable-parameter
summary, adapter-only checkpoints, and the optimizer with its schedule."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from ftexp.builders.adapter import adalora_orthogonal_penalty, apply_adapter, count_parameters
from ftexp.builders.backbone import load_configured_backbone
from ftexp.builders.optim import build_optimizer
from ftexp.builders.quant import prepare_for_kbit_training, quantization_config
from ftexp.builders.schedulers import build_scheduler

log = logging.getLogger(__name__)


class FinetuneTask(L.LightningModule):
    """Holds plain dicts of the model / adapter / task / scheduler / quant / generation settings
    and the target description, so a checkpoint alone says how to rebuild the model
    (`ftexp.predict`, `ftexp.generate`, `ftexp.export`).

    Subclasses build `self.network` in `build_network` and say where the (PEFT) backbone is.
    """

    def __init__(self, model: dict[str, Any], adapter: dict[str, Any], task: dict[str, Any],
                 scheduler: dict[str, Any], target: dict[str, Any] | None = None,
                 quant: dict[str, Any] | None = None, generation: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters()
        # With an adapter, checkpoints keep only what trains (adapter + head); the frozen rest
        # comes back from the base weights (random-init bases are rebuilt identically), so
        # loading is not strict.
        self.saves_trainable_only = adapter["method"] != "none"
        self.strict_loading = not self.saves_trainable_only
        self.network: nn.Module | None = None
        self.parameter_counts: dict[str, int] = {}

    # -- building -------------------------------------------------------------------------------

    def build_network(self) -> nn.Module:
        raise NotImplementedError

    @property
    def backbone(self) -> nn.Module:
        """The (possibly PEFT-wrapped) transformer inside `self.network`."""
        raise NotImplementedError

    def adapted_backbone(self, causal_lm: bool = False) -> nn.Module:
        """The configured transformer, quantized and k-bit-prepared if asked, with its adapter;
        with its LM head (and a generation-ready PEFT wrapper) when `causal_lm`."""
        a = self.hparams.adapter
        quant = self.hparams.quant or {"method": "none"}
        backbone = load_configured_backbone(self.hparams.model, quantization_config(quant), causal_lm)
        if quant["method"] != "none":
            backbone = prepare_for_kbit_training(backbone, quant.get("upcast_norms", True))
        if a["method"] == "adalora" and self._trainer is not None:
            a = {**a, "total_step": int(self.trainer.estimated_stepping_batches)}
        return apply_adapter(backbone, a, task_type="CAUSAL_LM" if causal_lm else None)

    # Built here rather than in __init__ so sharded strategies can build it on each rank.
    def configure_model(self) -> None:
        if self.network is not None:
            return
        self.network = self.build_network()
        self.network.train()  # from_pretrained returns eval mode; Lightning keeps modes as found
        trainable, total = count_parameters(self.network)
        self.parameter_counts = {"trainable_params": trainable, "total_params": total}
        log.info("parameters: %s trainable of %s (%.2f%%)", f"{trainable:,}", f"{total:,}",
                 100 * trainable / total)

    # -- metrics helpers --------------------------------------------------------------------------

    def stage_metrics(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_metrics")

    def log_stage(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=batch_size)
        self.log_dict(self.stage_metrics(stage), on_step=False, on_epoch=True,
                      prog_bar=stage != "train")

    # -- optimisation and checkpoints ------------------------------------------------------------

    def adapter_penalty(self) -> torch.Tensor | float:
        """Regularisation the adapter method asks to add to the training loss (AdaLoRA's)."""
        if self.hparams.adapter["method"] == "adalora":
            return adalora_orthogonal_penalty(self.backbone)
        return 0.0

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.hparams.adapter["method"] == "adalora":
            # AdaLoRA re-budgets ranks from the gradients, after the step and before zero_grad.
            self.backbone.base_model.update_and_allocate(self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        t, s = self.hparams.task, self.hparams.scheduler
        optimizer = build_optimizer(self.network, t["learning_rate"], t["weight_decay"])
        scheduler = build_scheduler(optimizer, s["name"], s["warmup_fraction"],
                                    int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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

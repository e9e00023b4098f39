"""What every task shares: backbone → k-bit preparation → adapter, the trainable-parameter
summary, adapter-only checkpoints, and the optimizer with its schedule."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from torch import nn
from torchmetrics import MeanMetric, Metric

from ftexp.builders.adapter import adalora_orthogonal_penalty, apply_adapter, count_parameters
from ftexp.builders.init_from import load_starting_network
from ftexp.builders.optim import allow_clipping_without_scaler, build_optimizer, use_fused_adamw
from ftexp.builders.quant import prepare_for_kbit_training, quantization_config
from ftexp.builders.schedulers import build_scheduler
from ftexp.builders.strategy import plain_parameter_name
from ftexp.callbacks.nonfinite import NonFiniteGuard
from ftexp.config.adapter import ADAPTERS

log = logging.getLogger(__name__)

# Validation loaders in order: the validation split, then (trainer.evaluate_training_set) the
# training set scored in eval mode.
EVAL_STAGES = ("val", "train_eval")


def set_update_count(metric: Metric, count: int) -> None:
    """Restore how many batches `metric` had seen when a checkpoint was saved.

    Private torchmetrics API (`Metric._update_count`): torchmetrics reads the count publicly
    (`Metric.update_count`) but has no public way to set it; `load_state_dict` (even with
    `persistent(True)`) and `merge_state` leave it alone, and `reset()` zeroes it. A resumed
    metric needs it: at 0, `compute()` warns that `update` was never called, and states reduced
    by mean weight the next batch by it. tests/test_private_apis.py pins this behaviour."""
    metric._update_count = count


class RunParts(NamedTuple):
    """What a task contributes to a training run: its data, its module, its own callbacks."""
    datamodule: L.LightningDataModule
    task: FinetuneTask
    callbacks: list[L.Callback]


class FinetuneTask(L.LightningModule):
    """Holds plain dicts of the model / adapter / task / scheduler / quant / generation settings
    and the target description, so a checkpoint alone says how to rebuild the model
    (`ftexp.predict`, `ftexp.generate`, `ftexp.export`).

    Subclasses build `self.network` in `build_network` and say where the (PEFT) backbone is.
    """

    def __init__(self, model: dict[str, Any], adapter: dict[str, Any], task: dict[str, Any],
                 scheduler: dict[str, Any], target: dict[str, Any] | None = None,
                 quant: dict[str, Any] | None = None, generation: dict[str, Any] | None = None,
                 optimizer: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters()
        # The number the optimizer starts from. `auto` / `find` in the config are resolved by the
        # training job before fitting; Lightning's LR finder sets this attribute too.
        lr = (optimizer or {}).get("learning_rate")
        self.learning_rate: float | None = lr if isinstance(lr, (int, float)) else None
        # With an adapter, checkpoints keep only what trains (adapter + head); the frozen rest
        # comes back from the base weights (random-init bases are rebuilt identically), so
        # loading is not strict.
        self.saves_trainable_only = not ADAPTERS[adapter["method"]].trains_all_weights
        self.strict_loading = not self.saves_trainable_only
        self.network: nn.Module | None = None
        self.parameter_counts: dict[str, int] = {}
        self.train_loss = MeanMetric()

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Any, settings: dict[str, Any], tokenizer: Any, run_dir: Path) -> RunParts:
        """The DataModule (set up: its data read and checked before the model is built), the
        task, and the callbacks it needs, for a validated config. `settings` are the groups the
        task keeps in its checkpoint (see train.task_settings)."""
        raise NotImplementedError

    @classmethod
    def for_target(cls, target: dict[str, Any] | None) -> type[FinetuneTask]:
        """The class that serves this target description (see ftexp.data.targets)."""
        return cls

    def before_fit(self, cfg: Any, trainer: Any, datamodule: Any) -> None:
        """Work on the starting weights that must happen before fitting (and before a resumed run
        loads its checkpoint), such as precomputed reference log-probs; nothing by default."""

    def summary(self) -> dict[str, Any]:
        """What the task adds to the run's metrics.json."""
        return dict(self.parameter_counts)

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
        backbone = load_starting_network(self.hparams.model, quantization_config(quant), causal_lm)
        if self.hparams.model.get("gradient_checkpointing"):
            # Non-reentrant: works with frozen inputs (adapters) without forcing input grads.
            # transformers renamed it activation checkpointing; older 5.x releases lack the new name.
            non_reentrant = {"use_reentrant": False}
            if hasattr(backbone, "activation_checkpointing_enable"):
                backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
            else:
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=non_reentrant)
        saved_quantized = getattr(backbone, "hf_quantizer", None) is not None  # a GPTQ / AWQ … checkpoint
        if quant["method"] != "none" or saved_quantized:
            backbone = prepare_for_kbit_training(backbone, quant.get("upcast_norms", True))
        if ADAPTERS[a["method"]].budgets_ranks and self._trainer is not None:
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

    def trained(self, labels: torch.Tensor) -> torch.Tensor:
        """Mask of the label entries the loss counts (trained tokens, labelled rows)."""
        raise NotImplementedError

    def loss_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int(self.trained(batch["labels"]).sum())

    def log_train_loss(self, mean_loss: torch.Tensor, weight: torch.Tensor, batch_idx: int) -> None:
        """The step's loss every trainer.log_every_n_steps steps (`train/loss_step`: progress bar and
        curves) and the epoch's item-weighted mean at its end (`train/loss`). Lightning's own
        per-step `self.log` costs about a millisecond — more than a head-only step on cached
        embeddings — so it is called only when a value is due."""
        self.train_loss.update(mean_loss.detach(), weight=weight)
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", mean_loss.detach(), prog_bar=True, on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        if self.train_loss.update_called:
            self.log("train/loss", self.train_loss.compute(), sync_dist=True)  # equal on every rank
        self.train_loss.reset()

    def normalized_loss(self, total: torch.Tensor, count: torch.Tensor,
                        batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss to backpropagate: the mean over the batch's items, or, in training batches
        that carry their accumulation window's item count, this batch's share of the window's
        mean (Lightning divides by the number of accumulated batches, hence the product)."""
        if "window_items" in batch and self.training:
            return total / batch["window_items"].clamp(min=1) * self.trainer.accumulate_grad_batches
        return total / count.clamp(min=1)

    # -- optimisation and checkpoints ------------------------------------------------------------

    def adapter_penalty(self) -> torch.Tensor | float:
        """Regularisation the adapter method asks to add to the training loss (AdaLoRA's)."""
        if ADAPTERS[self.hparams.adapter["method"]].budgets_ranks:
            return adalora_orthogonal_penalty(self.backbone)
        return 0.0

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if ADAPTERS[self.hparams.adapter["method"]].budgets_ranks:
            # AdaLoRA re-budgets ranks from the gradients, after the step and before zero_grad.
            self.backbone.base_model.update_and_allocate(self.global_step)
        # Lightning zeroes the gradients inside the next closure, after its forward pass, so the
        # last step's gradients (one more copy of every trainable weight) would sit beside the
        # next forward's activations at the step's memory peak. Freed here instead, as the
        # Trainer does; Lightning's own zero_grad then finds nothing to clear.
        optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping, by the total norm NonFiniteGuard measured a moment ago when there
        is one: clip_grad_norm_ is exactly get_total_norm then clip_grads_with_norm_, so the
        result is the same bit for bit, less one pass over the gradients."""
        plugin = self.trainer.precision_plugin
        by_norm = gradient_clip_algorithm in (None, "norm") and bool(gradient_clip_val)
        # Plugins that clip their own way (FSDP, DeepSpeed) keep it; the guard measures nothing
        # under fp16's scaler.
        plain = (type(plugin).clip_grad_by_norm is Precision.clip_grad_by_norm
                 and type(plugin).clip_gradients in (Precision.clip_gradients, MixedPrecision.clip_gradients))
        guards = [c for c in self.trainer.callbacks if isinstance(c, NonFiniteGuard)]
        norm = guards[0].checked_norm(optimizer) if guards and by_norm and plain else None
        if norm is None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        torch.nn.utils.clip_grads_with_norm_(plugin.main_params(optimizer), gradient_clip_val, norm)

    def configure_optimizers(self) -> dict[str, Any]:
        o, s = self.hparams.optimizer, self.hparams.scheduler
        if self.learning_rate is None:
            raise RuntimeError("learning rate not resolved: the training job sets it before fitting")
        fused = o["fused"]
        if fused == "auto":
            fused = use_fused_adamw(self.device.type, str(self.trainer.precision),
                                    self.trainer.gradient_clip_val)
        optimizer = build_optimizer(self.optimized_module(), o, self.learning_rate, fused=bool(fused))
        allow_clipping_without_scaler(optimizer, str(self.trainer.precision))
        scheduler = build_scheduler(optimizer, s, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimized_module(self) -> nn.Module:
        """What the optimizer trains: the network (PPO adds its value head)."""
        return self.network

    def trainable_names(self) -> set[str]:
        """State-dict names of the trainable parameters (wrapper prefixes of FSDP, activation
        checkpointing and compile removed, as state dicts have them)."""
        return {plain_parameter_name(name) for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.saves_trainable_only and "state_dict" in checkpoint:  # DeepSpeed keeps its own
            keep = self.trainable_names()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if "optimizer_states" in checkpoint:  # a full-state save, to resume from
            # torchmetrics keeps running sums in non-persistent buffers; without them a run resumed
            # mid-epoch would report that epoch's metrics over the batches after the resume only.
            checkpoint["metric_states"] = {
                name: {"state": dict(metric.metric_state), "updates": metric.update_count}
                for name, metric in self.named_modules() if isinstance(metric, Metric)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("metric_states", {})
        for name, metric in self.named_modules():
            if isinstance(metric, Metric) and name in saved:
                metric.reset()  # drops any cached compute() result; the saved states replace the rest
                for key, value in saved[name]["state"].items():
                    moved = (value.to(metric.device) if isinstance(value, torch.Tensor)
                             else [v.to(metric.device) for v in value])
                    setattr(metric, key, moved)
                set_update_count(metric, saved[name]["updates"])

    def load_trained_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's weights; a trainable-only checkpoint must cover every trainable one."""
        result = self.load_state_dict(state_dict, strict=not self.saves_trainable_only)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing = trainable & set(result.missing_keys)
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint does not match the model: missing {sorted(missing)[:3]}, "
                               f"unexpected {sorted(result.unexpected_keys)[:3]}")

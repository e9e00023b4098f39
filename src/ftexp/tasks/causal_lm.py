"""Causal-LM fine-tuning (SFT) and continued pretraining: next-token cross-entropy on the tokens
whose label is not -100, averaged over tokens (not rows), so a packed and an unpacked batch of
the same samples give the same loss."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from ftexp.data.causal_lm import trained_tokens
from ftexp.data.targets import IGNORE
from ftexp.tasks.base import EVAL_STAGES, FinetuneTask, RunParts


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss of predicting labels[t + 1] from position t, and the mask of trained
    tokens; both (batch, seq - 1). Ignored tokens have loss 0."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                             ignore_index=IGNORE, reduction="none").view_as(targets)
    return losses, targets != IGNORE


class CausalLMTask(FinetuneTask):
    """Metrics: `loss` and `perplexity` (exp of the token-weighted mean loss of the split)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.val_loss = MeanMetric()
        self.train_eval_loss = MeanMetric()
        self.test_loss = MeanMetric()

    @classmethod
    def from_config(cls, cfg: Any, settings: dict[str, Any], tokenizer: Any, run_dir: Path) -> RunParts:
        """Prompt/response (or raw text) data, the task, and sample generations from the first
        validation prompts at each evaluation."""
        from omegaconf import OmegaConf

        from ftexp import run_dir as run_files
        from ftexp.callbacks.sample_generations import SampleGenerations
        from ftexp.data.causal_lm import CausalLMDataModule
        from ftexp.tasks.registry import get_task

        datamodule = CausalLMDataModule(
            OmegaConf.to_object(cfg.data), tokenizer, raw_text=not get_task(cfg.task.name).needs_prompts,
            train_on_prompt=cfg.task.train_on_prompt, seed=cfg.seed, cache_dir=cfg.paths.cache_dir,
            evaluate_training_set=cfg.trainer.evaluate_training_set)
        datamodule.setup()
        prompts = datamodule.validation_prompts(cfg.task.sample_generations)
        prompt_ids = [datamodule.encoder.prompt_ids(p) for p in prompts]
        callbacks = [SampleGenerations(tokenizer, prompts, prompt_ids, settings["generation"],
                                       run_dir / run_files.GENERATIONS_FILE)] if prompts else []
        return RunParts(datamodule, cls(**settings), callbacks)

    def build_network(self) -> nn.Module:
        network = self.adapted_backbone(causal_lm=True)
        alpha = self.hparams.task.get("neftune_noise_alpha")
        if alpha:
            from transformers.integrations.neftune import activate_neftune

            # Noise on the input embeddings in training mode only; generation stays clean.
            activate_neftune(network, alpha)
        return network

    @property
    def backbone(self) -> nn.Module:
        return self.network

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Unpacked rows carry an attention mask; packed rows carry position ids instead (see
        # data/packing.py), from which transformers builds the block-diagonal mask.
        extra = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
        return self.network(input_ids=batch["input_ids"], use_cache=False, **extra).logits

    def trained(self, labels: torch.Tensor) -> torch.Tensor:
        return trained_tokens(labels)

    def _sum_and_count(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        losses, trained = token_losses(self(batch), batch["labels"])
        return losses.sum(), trained.sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, count = self._sum_and_count(batch)
        self.log_train_loss(total / count.clamp(min=1), count, batch_idx)
        return self.normalized_loss(total, count, batch) + self.adapter_penalty()

    def _eval_step(self, batch: dict[str, torch.Tensor], metric: MeanMetric) -> None:
        total, count = self._sum_and_count(batch)
        if count > 0:  # weighting by tokens makes the epoch value the mean over all tokens
            metric.update(total / count, weight=count)

    def _log_eval(self, stage: str, metric: MeanMetric) -> None:
        if not metric.update_called:
            return
        loss = metric.compute()
        metric.reset()
        # MeanMetric.compute() already gathers every rank; sync_dist only averages equal values.
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", add_dataloader_idx=False, sync_dist=True)
        self.log(f"{stage}/perplexity", torch.exp(loss.clamp(max=math.log(1e9))), add_dataloader_idx=False,
                 sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        self._eval_step(batch, getattr(self, f"{EVAL_STAGES[dataloader_idx]}_loss"))

    def on_validation_epoch_end(self) -> None:
        for stage in EVAL_STAGES:
            self._log_eval(stage, getattr(self, f"{stage}_loss"))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_loss)

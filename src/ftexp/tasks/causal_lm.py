"""Causal-LM fine-tuning (SFT) and continued pretraining: next-token cross-entropy on the tokens
whose label is not -100, averaged over tokens (not rows), so a packed and an unpacked batch of
the same samples give the same loss."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from ftexp.data.causal_lm import trained_tokens
from ftexp.data.targets import IGNORE
from ftexp.tasks import lm_loss
from ftexp.tasks.base import EVAL_STAGES, FinetuneTask, RunParts


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss of predicting labels[t + 1] from position t, and the mask of trained
    tokens; both (batch, seq - 1). Ignored tokens have loss 0."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                             ignore_index=IGNORE, reduction="none").view_as(targets)
    return losses, targets != IGNORE


def example_losses(losses: torch.Tensor, trained: torch.Tensor, labels: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Each sample's mean token loss, its trained-token count and a digest of its target ids (a
    report matches two runs' samples by it: packing may score them in another order), in batch
    order. A packed row holds several samples, each starting at position 0; padding, with no
    trained token, is skipped."""
    import hashlib

    starts = position_ids == 0 if position_ids is not None else torch.zeros_like(labels, dtype=torch.bool)
    segment = starts.long().cumsum(dim=1)[:, 1:]  # the sample each target token belongs to
    found = []
    for row in range(losses.shape[0]):
        for seg in segment[row].unique().tolist():
            mask = trained[row] & (segment[row] == seg)
            count = int(mask.sum())
            if count:
                ids = labels[row, 1:][mask].tolist()
                found.append({"loss": float(losses[row][mask].sum()) / count, "tokens": count,
                              "target": hashlib.sha1(repr(ids).encode()).hexdigest()[:16]})
    return found


class CausalLMTask(FinetuneTask):
    """Metrics: `loss` and `perplexity` (exp of the token-weighted mean loss of the split). The
    loss comes from the final hidden states in chunks, or a fused kernel, or full logits
    (tasks/lm_loss.py; `loss_path` in metrics.json says which)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loss_path: lm_loss.LossPath | None = None
        self.val_loss = MeanMetric()
        self.train_eval_loss = MeanMetric()
        self.test_loss = MeanMetric()
        # Per-example losses of the test split and of the latest validation, for paired
        # comparisons in ftexp.report (losses_test.jsonl, losses_validation.jsonl).
        self.examples: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}

    @classmethod
    def from_config(cls, cfg: Any, settings: dict[str, Any], tokenizer: Any, run_dir: Path) -> RunParts:
        """Prompt/response (or raw text) data, the task, and sample generations from the first
        validation prompts at each evaluation."""
        from omegaconf import OmegaConf

        from ftexp.callbacks.sample_generations import SampleGenerations
        from ftexp.data.causal_lm import CausalLMDataModule
        from ftexp.runs import run_dir as run_files
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
        lm_loss.apply_kernel_patches(network, self.hparams.model.get("kernels", "none"))
        return network

    def configure_model(self) -> None:
        super().configure_model()
        if self.loss_path is None:
            self.loss_path = lm_loss.loss_path_for(self.network, self.hparams.model)

    def summary(self) -> dict[str, Any]:
        path = {"loss_path": self.loss_path.describe()} if self.loss_path is not None else {}
        return {**super().summary(), **path}

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
        path, labels = self.loss_path, batch["labels"]
        if path is None or path.full_logits:
            losses, trained = token_losses(self(batch), labels)
            return losses.sum(), trained.sum()
        hidden = lm_loss.final_hidden_states(self.network, **lm_loss.hidden_inputs(batch))
        head = lm_loss.output_head(self.network)
        if path.kernel != "none":
            return lm_loss.kernel_loss_sum(hidden, labels, head, path)
        return lm_loss.summed_token_loss(hidden, labels, head, path)

    def _token_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """token_losses of the batch, by the chunked path where it is on (the fused kernels
        return sums only, so evaluation takes the chunked path under them)."""
        path = self.loss_path
        if path is None or path.full_logits:
            return token_losses(self(batch), batch["labels"])
        hidden = lm_loss.final_hidden_states(self.network, **lm_loss.hidden_inputs(batch))
        return lm_loss.token_losses_from_hidden(hidden, batch["labels"], lm_loss.output_head(self.network),
                                                self._chunked_path())

    def _chunked_path(self) -> lm_loss.LossPath:
        """The run's loss path where it is chunked, else the chunked one with its logit transform."""
        path = self.loss_path
        return (path if path.chunk_tokens is not None
                else lm_loss.LossPath("chunked(1024)", 1024, transform=path.transform))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, count = self._sum_and_count(batch)
        self.log_train_loss(total / count.clamp(min=1), count, batch_idx)
        return self.normalized_loss(total, count, batch) + self.adapter_penalty()

    def _eval_step(self, batch: dict[str, torch.Tensor], metric: MeanMetric,
                   examples: list[dict[str, Any]] | None = None) -> None:
        self._record_eval(*self._token_losses(batch), batch, metric, examples)

    def _record_eval(self, losses: torch.Tensor, trained: torch.Tensor, batch: dict[str, torch.Tensor],
                     metric: MeanMetric, examples: list[dict[str, Any]] | None) -> None:
        total, count = losses.sum(), trained.sum()
        if count > 0:  # weighting by tokens makes the epoch value the mean over all tokens
            metric.update(total / count, weight=count)
        if examples is not None:
            examples += example_losses(losses.detach(), trained, batch["labels"], batch.get("position_ids"))

    def _write_examples(self, stage: str, split: str) -> None:
        """One JSON line per sample; skipped where one process holds only its share of the split."""
        from ftexp.runs import atomic, run_dir

        rows, self.examples[stage] = self.examples[stage], []
        trainer, out = self.trainer, Path(self.trainer.default_root_dir)
        # A test after a multi-process fit runs in a Trainer of its own, rooted elsewhere.
        in_run_dir = (out / run_dir.CONFIG_FILE).is_file()
        if rows and trainer.world_size == 1 and not trainer.sanity_checking and in_run_dir:
            lines = "".join(json.dumps({"example": i, **r}) + "\n" for i, r in enumerate(rows))
            atomic.write_text(out / run_dir.EXAMPLE_LOSSES_FILE.format(split=split), lines)

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
        stage = EVAL_STAGES[dataloader_idx]
        self._eval_step(batch, getattr(self, f"{stage}_loss"), self.examples.get(stage))

    def on_validation_epoch_end(self) -> None:
        for stage in EVAL_STAGES:
            self._log_eval(stage, getattr(self, f"{stage}_loss"))
        self._write_examples("val", "validation")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss, self.examples["test"])

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_loss)
        self._write_examples("test", "test")

"""Reward models: a scalar score per (prompt, response) from a pooled linear head on any
backbone (decoder LLMs pooled on the last non-padding token, encoders on the mean), trained on
preference pairs with the Bradley–Terry loss (minus a margin per pair when the data give one).

The head has no bias: a constant shift cancels in every pairwise loss, and without it the
exported AutoModelForSequenceClassification (whose `score` layer has none) gives the same
scores. Responses end without EOS, so the score is read at the response's last token, the
position transformers' sequence classifiers read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torchmetrics import MeanMetric

from ftexp.builders.adapter import backbone_is_frozen
from ftexp.builders.backbone import is_decoder_only
from ftexp.modeling import PooledHeadModel
from ftexp.tasks.base import EVAL_STAGES, FinetuneTask, RunParts
from ftexp.tasks.preference_losses import bradley_terry_loss

METRICS = ("loss", "accuracy", "margin")


class RewardTask(FinetuneTask):
    """Metrics: `accuracy` (share of pairs whose chosen response scores higher; a tie is wrong),
    `margin` (mean chosen − rejected score) and `loss`, averaged over pairs."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.eval_metrics = nn.ModuleDict({stage: nn.ModuleDict({m: MeanMetric() for m in METRICS})
                                           for stage in (*EVAL_STAGES, "test")})
        self.test_predictions: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, cfg: Any, settings: dict[str, Any], tokenizer: Any, run_dir: Path) -> RunParts:
        from omegaconf import OmegaConf

        from ftexp.data.preference_batches import PreferenceDataModule

        datamodule = PreferenceDataModule(
            OmegaConf.to_object(cfg.data), tokenizer, "pairs", seed=cfg.seed, cache_dir=cfg.paths.cache_dir,
            evaluate_training_set=cfg.trainer.evaluate_training_set, end_with_eos=False)
        datamodule.setup()
        # The checkpoint remembers how prompts were given, so predictions render them alike.
        return RunParts(datamodule, cls(target={"prompts": datamodule.prompt_kind}, **settings), [])

    def build_network(self) -> nn.Module:
        t = self.hparams.task
        backbone = self.adapted_backbone()
        pooling = t["pooling"]
        if pooling == "auto":
            pooling = "last" if is_decoder_only(backbone.config) else "mean"
        return PooledHeadModel(backbone, 1, pooling, t["head_dropout"],
                               backbone_is_frozen(self.hparams.adapter["method"]), bias=False)

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One score per sequence of the batch."""
        return self.network(batch["input_ids"], batch["attention_mask"]).squeeze(-1).float()

    def trained(self, labels: torch.Tensor) -> torch.Tensor:
        return labels[:, 1:] != -100

    def _scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(chosen scores, rejected scores, per-pair losses)."""
        chosen, rejected = self(batch).chunk(2)
        return chosen, rejected, bradley_terry_loss(chosen, rejected, batch.get("margin"))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        chosen, rejected, losses = self._scores(batch)
        count = torch.tensor(len(losses), device=losses.device)
        self.log_train_loss(losses.mean(), count, batch_idx)
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            self.log_dict({"train/accuracy": (chosen > rejected).float().mean(),
                           "train/margin": (chosen - rejected).mean().detach()}, on_step=True, on_epoch=False)
        return self.normalized_loss(losses.sum(), count, batch) + self.adapter_penalty()

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        chosen, rejected, losses = self._scores(batch)
        n = len(losses)
        for name, value in (("loss", losses.mean()), ("accuracy", (chosen > rejected).float().mean()),
                            ("margin", (chosen - rejected).mean())):
            self.eval_metrics[stage][name].update(value, weight=n)
        return torch.stack([chosen, rejected], dim=1)

    def _log_eval(self, stage: str) -> None:
        metrics = self.eval_metrics[stage]
        values = {f"{stage}/{name}": m.compute() for name, m in metrics.items() if m.update_called}
        for m in metrics.values():
            m.reset()
        if values:
            self.log_dict(values, prog_bar=stage == "val", add_dataloader_idx=False, sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        self._eval_step(batch, EVAL_STAGES[dataloader_idx])

    def on_validation_epoch_end(self) -> None:
        for stage in EVAL_STAGES:
            self._log_eval(stage)

    def on_test_epoch_start(self) -> None:
        self.test_predictions = []

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Kept so the run writes the test pairs' scores without a second pass.
        self.test_predictions.append(self._eval_step(batch, "test").cpu())

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch)

    # -- prediction files ---------------------------------------------------------------------------

    def prediction_columns(self, predictions: torch.Tensor) -> dict[str, list[Any]]:
        """Test pairs: both scores; scored (prompt, response) rows: `score`."""
        values = predictions.double().cpu().numpy().round(6)
        if values.ndim == 2:
            return {"score_chosen": values[:, 0].tolist(), "score_rejected": values[:, 1].tolist()}
        return {"score": values.tolist()}

    def prediction_rows(self, frame: pd.DataFrame, tokenizer: Any, cfg: Any,
                        columns: list[str] | None) -> tuple[list[dict[str, Any]], Any]:
        """A file of (prompt, response) rows → encoded rows and their collate function. The prompt
        column is the run's data.preference.prompt_column (text, or a list of messages; text is
        sent as one user message when the run trained on conversations); the response column is
        `response` or `completion`, or `columns` = [prompt, response]."""
        from functools import partial

        from ftexp.data.preference_batches import PreferenceEncoder, collate_responses, encode_responses
        from ftexp.errors import DataError

        prompt_column = cfg.data.preference.prompt_column
        response_column = next((c for c in ("response", "completion") if c in frame.columns), "response")
        if columns:
            if len(columns) != 2:
                raise DataError(f"a reward model scores (prompt, response) rows: give two columns, "
                                f"got {columns}.")
            prompt_column, response_column = columns
        missing = [c for c in (prompt_column, response_column) if c not in frame.columns]
        if missing:
            raise DataError(f"column(s) {missing} not found; a reward model scores rows with a prompt and a "
                            f"response column (columns are: {', '.join(map(str, frame.columns))}); name them "
                            "with --text-columns PROMPT RESPONSE.")
        encoder = PreferenceEncoder(tokenizer, cfg.data.get("prompt_template"), end_with_eos=False)
        chat = (self.hparams.target or {}).get("prompts") == "chat"
        prompts = [[{"role": "user", "content": p}] if chat and isinstance(p, str) else p
                   for p in frame[prompt_column].tolist()]
        rows = encode_responses(encoder, prompts,
                                frame[response_column].astype(str).tolist(), cfg.data.max_length,
                                cfg.data.get("max_prompt_length"))
        return rows, partial(collate_responses, pad_id=int(tokenizer.pad_token_id))

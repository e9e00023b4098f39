"""Reward models: a scalar score per (prompt, response) from a pooled linear head on any
backbone (decoder LLMs pooled on the last non-padding token, encoders on the mean), trained on
preference pairs with the Bradley–Terry loss (minus a margin per pair when the data give one).

The head has no bias: a constant shift cancels in every pairwise loss, and without it the
exported AutoModelForSequenceClassification (whose `score` layer has none) gives the same
scores. The score is read at the response's last token, where transformers' sequence
classifiers read it (their last token that is not the pad id): text responses get no EOS, and a
chat turn's closing token is left off when it doubles as the pad (preference_batches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ftexp.tasks.base import RunParts
from ftexp.tasks.per_example import Metrics, PerExampleTask
from ftexp.tasks.pooled import pooled_head_network
from ftexp.tasks.preference_losses import bradley_terry_loss


class RewardTask(PerExampleTask):
    """Metrics: `accuracy` (share of pairs whose chosen response scores higher; a tie is wrong),
    `margin` (mean chosen − rejected score) and `loss`, averaged over pairs."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
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
        return pooled_head_network(self, 1, bias=False)

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One score per sequence of the batch."""
        return self.network(batch["input_ids"], batch["attention_mask"]).squeeze(-1).float()

    def _scored(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics, torch.Tensor]:
        """Per-pair losses, the metrics, and the (pairs, 2) chosen / rejected scores."""
        chosen, rejected = self(batch).chunk(2)
        losses = bradley_terry_loss(chosen, rejected, batch.get("margin"))
        n = len(losses)
        metrics = {"accuracy": ((chosen > rejected).float().mean(), n),
                   "margin": ((chosen - rejected).mean(), n)}
        return losses, metrics, torch.stack([chosen, rejected], dim=1)

    def loss_and_metrics(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        return self._scored(batch)[:2]

    def on_test_epoch_start(self) -> None:
        self.test_predictions = []

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses, metrics, scores = self._scored(batch)
        self.record("test", losses, metrics)
        # Kept so the run writes the test pairs' scores without a second pass.
        self.test_predictions.append(scores.detach().cpu())

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch)

    @torch.no_grad()
    def score_texts(self, prompts: list[Any], responses: list[str], tokenizer: Any, cfg: Any,
                    batch_size: int = 16) -> list[float]:
        """Scores of (prompt, response) pairs in memory, encoded as `prediction_rows` encodes a
        file's rows (a GRPO reward: ftexp.tasks.rewards.reward_model)."""
        frame = pd.DataFrame({"prompt": prompts, "response": responses})
        # A sample that ended at once is scored too: the reward model's score of the prompt alone.
        rows, collate = self.prediction_rows(frame, tokenizer, cfg, ["prompt", "response"], allow_empty=True)
        scores: list[float] = []
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(self.device) for k, v in collate(rows[start:start + batch_size]).items()}
            scores += self(batch).tolist()
        return scores

    # -- prediction files ---------------------------------------------------------------------------

    def prediction_columns(self, predictions: torch.Tensor) -> dict[str, list[Any]]:
        """Test pairs: both scores; scored (prompt, response) rows: `score`."""
        values = predictions.double().cpu().numpy().round(6)
        if values.ndim == 2:
            return {"score_chosen": values[:, 0].tolist(), "score_rejected": values[:, 1].tolist()}
        return {"score": values.tolist()}

    def prediction_rows(self, frame: pd.DataFrame, tokenizer: Any, cfg: Any, columns: list[str] | None,
                        allow_empty: bool = False) -> tuple[list[dict[str, Any]], Any]:
        """A file of (prompt, response) rows → encoded rows and their collate function. The prompt
        column is the run's data.preference.prompt_column (text, or a list of messages; text is
        sent as one user message when the run trained on conversations); the response column is
        `response` or `completion`, or `columns` = [prompt, response]."""
        from functools import partial

        from ftexp.data.preference import read_responses
        from ftexp.data.preference_batches import PreferenceEncoder, collate_responses, encode_responses
        from ftexp.runs.errors import DataError

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
        scored = read_responses(frame, prompt_column, response_column, cfg.data.preference, allow_empty)
        prompts = [[{"role": "user", "content": p}] if chat and isinstance(p, str) else p for p, _ in scored]
        rows = encode_responses(encoder, prompts, [r for _, r in scored], cfg.data.max_length,
                                cfg.data.get("max_prompt_length"))
        return rows, partial(collate_responses, pad_id=int(tokenizer.pad_token_id))

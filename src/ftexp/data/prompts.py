"""Prompts for online RL (task=grpo): a table with a prompt column — text, filled into
data.prompt_template's {prompt} if there is one, or a list of {role, content} messages rendered by
the chat template with the generation prompt (PreferenceEncoder.prompt_ids does both) — and any
other columns, which ride along per row for the reward functions (a reference answer, say).

A batch is the prompts left-padded (every row ends where generation starts), plus the prompts as
given and the other columns as lists, in row order."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

import torch

from ftexp.config.data import DataConfig
from ftexp.data.preference_batches import PreferenceEncoder
from ftexp.data.readers import read_table
from ftexp.data.rows import Rows, RowsDataModule
from ftexp.data.splits import split_frame
from ftexp.runs.errors import DataError

log = logging.getLogger(__name__)

# Hidden column that carries each row's position in the file through the split (errors name it).
_RECORD = "_ftexp_record"


def _prompt(value: Any, column: str, record: int) -> str | list[dict[str, str]]:
    """A prompt cell as text, or as normalised messages; a one-line DataError otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":  # parquet lists
        messages = []
        for i, m in enumerate(value, start=1):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise DataError(f"record {record}: message {i} of '{column}' is not a "
                                '{"role": …, "content": "…"} object.')
            messages.append({"role": m["role"], "content": m["content"]})
        if not messages:
            raise DataError(f"record {record}: '{column}' is an empty conversation.")
        return messages
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    what = "has no value" if missing else f"is {type(value).__name__}"
    raise DataError(f"record {record}: '{column}' {what}; give the prompt as text or as a list of "
                    "{role, content} messages.")


def collate_prompts(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Left-padded prompt ids and mask, with the prompts as given and the other columns (lists)."""
    width = max(len(r["prompt_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["prompt_ids"])
        ids[i, width - n:] = torch.tensor(r["prompt_ids"])
        mask[i, width - n:] = 1
    columns = {key: [r["columns"].get(key) for r in rows] for key in rows[0]["columns"]}
    return {"input_ids": ids, "attention_mask": mask, "record": torch.tensor([r["record"] for r in rows]),
            "prompts": [r["prompt"] for r in rows], "columns": columns}


class PromptsDataModule(RowsDataModule):
    """Reads a prompts file, splits it (data.split_column or data.split_probabilities), encodes
    each prompt once and serves left-padded batches. The prompt column is
    data.preference.prompt_column (default `prompt`, TRL's name); prompts longer than
    data.max_prompt_length (else data.max_length) keep their last tokens, or are dropped under
    data.truncation=drop. Encoding is cheap (prompts only), so it is not cached."""

    def __init__(self, config: DataConfig, tokenizer: Any, seed: int = 42, cache_dir: str | None = None,
                 evaluate_training_set: bool = False):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        super().__init__(config, seed, partial(collate_prompts, pad_id=int(pad)), tokenizer, None,
                         evaluate_training_set)
        self.encoder = PreferenceEncoder(tokenizer, config.prompt_template)
        self.prompt_column = config.preference.prompt_column
        # "chat" (messages through the chat template) or "text": kept with the run for generate.
        self.prompt_kind = "text"

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cfg = self.config
        table = read_table(cfg.path, cfg.format)
        if self.prompt_column not in table.columns:
            raise DataError(f"'{cfg.path}' has no prompt column '{self.prompt_column}'; columns are: "
                            f"{', '.join(map(str, table.columns))}. Set data.preference.prompt_column.")
        numbered = table.assign(**{_RECORD: range(1, len(table) + 1)})
        frames = split_frame(numbered, cfg.split_column, list(cfg.split_probabilities), cfg.split_seed)
        if cfg.max_train_samples is not None and len(frames["train"]) > cfg.max_train_samples:
            frames["train"] = frames["train"].sample(n=cfg.max_train_samples, random_state=cfg.split_seed)
        limit = cfg.max_prompt_length or cfg.max_length
        for split, frame in frames.items():
            rows, cut, dropped = [], 0, 0
            for row in frame.to_dict(orient="records"):
                record = int(row.pop(_RECORD))
                prompt = _prompt(row.pop(self.prompt_column), self.prompt_column, record)
                if isinstance(prompt, list):
                    self.prompt_kind = "chat"
                if cfg.split_column:
                    row.pop(cfg.split_column, None)  # not the reward functions' business
                ids = self.encoder.prompt_ids(prompt, row, record)
                if len(ids) > limit:
                    if cfg.truncation == "drop":
                        dropped += 1
                        continue
                    cut += 1
                    ids = ids[-limit:]  # the end of a prompt is what the completion follows
                rows.append({"record": record, "prompt_ids": ids, "prompt": prompt, "columns": row})
            if cut or dropped:
                log.warning("%s split: %d of %d prompts are longer than %d tokens: %d cut (keeping their "
                            "end), %d dropped (data.truncation=%s).", split, cut + dropped, len(frame),
                            limit, cut, dropped, cfg.truncation)
            if split in ("train", "validation") and not rows:
                raise DataError(f"no {split} prompt is left: all {len(frame)} are over {limit} tokens "
                                "under data.truncation=drop; raise data.max_prompt_length or set "
                                "data.truncation=cut.")
            self.datasets[split] = Rows(rows)
            log.info("%s split: %d prompts", split, len(rows))

    def loss_items(self, batch: dict[str, Any]) -> int:
        return len(batch["record"])

    def summary(self) -> dict[str, Any]:
        return {}

    def validation_prompts(self, n: int) -> tuple[list[str], list[list[int]]]:
        """The first n validation prompts (as the model sees them, and as ids), for sample generations."""
        rows = list(self.datasets["validation"].rows[:n]) if n else []
        texts = [self.tokenizer.decode(r["prompt_ids"], skip_special_tokens=False) for r in rows]
        return texts, [r["prompt_ids"] for r in rows]

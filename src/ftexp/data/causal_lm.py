"""DataModule for causal-LM fine-tuning: read → split → render (template or chat) → tokenize with
prompt tokens masked → truncate by policy → optionally pack → padded batches."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pandas as pd

from ftexp.config.data import DataConfig
from ftexp.data.packing import PACKING_ALGORITHM, pack, pad_batch
from ftexp.data.rows import Rows, RowsDataModule
from ftexp.data.splits import split_frame
from ftexp.data.targets import IGNORE
from ftexp.data.templates import chat_ids_and_mask, placeholders, render
from ftexp.runs.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def ensure_eos(tokenizer: Any) -> int:
    """The id appended to every target so the model learns to stop. BERT-style vocabularies
    (the tiny test models') have no EOS; their [SEP] plays the part."""
    if tokenizer.eos_token_id is None:
        if tokenizer.sep_token is None:
            raise ConfigError("the tokenizer has no EOS (or SEP) token to end responses with; "
                              "use a tokenizer that defines eos_token.")
        tokenizer.eos_token = tokenizer.sep_token
    return int(tokenizer.eos_token_id)


def bos_prefix(tokenizer: Any) -> list[int]:
    """What training puts before every sample: BOS, when the tokenizer has one of its own."""
    eos, bos = ensure_eos(tokenizer), tokenizer.bos_token_id
    return [bos] if bos is not None and bos != eos else []


def decoder_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer whose plain call (`tokenizer(text)`, special tokens on: what lm-eval and most
    users do) gives the ids training used — BOS if any, then the text. LLM tokenizers do already
    and are returned as they are; a BERT-style vocabulary (the tiny test decoders') would wrap every
    text in [CLS] … [SEP], so it gets a copy whose post-processor adds training's prefix only
    (saved as a generic tokenizers-backed tokenizer, which keeps that when reloaded)."""
    import copy

    prefix, probe = bos_prefix(tokenizer), "the sky is blue"
    if tokenizer(probe)["input_ids"] == prefix + tokenizer(probe, add_special_tokens=False)["input_ids"]:
        return tokenizer
    if not getattr(tokenizer, "is_fast", False):
        log.warning("the tokenizer adds special tokens training did not use, and is not a fast "
                    "tokenizer that can be changed; benchmark prompts will carry them")
        return tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    single = f"{tokenizer.bos_token} $A" if prefix else "$A"
    backend.post_processor = TemplateProcessing(
        single=single, pair=f"{single} $B:1",
        special_tokens=[(tokenizer.bos_token, prefix[0])] if prefix else [])
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=tokenizer.chat_template,
                                   padding_side=tokenizer.padding_side, **tokenizer.special_tokens_map)


class PromptFormatter:
    """Renders a row's prompt (what the model is given) and response (what it learns to write)."""

    def __init__(self, config: DataConfig, raw_text: bool = False):
        self.config = config
        # Raw text (continued pretraining): the first text column is the whole sample, all trained.
        self.raw_text = raw_text

    def columns(self) -> list[str]:
        c = self.config
        if self.raw_text:
            return [c.text_columns[0]]
        if c.messages_column:
            return [c.messages_column]
        return placeholders(c.prompt_template) + placeholders(c.response_template)

    def prompt(self, row: dict[str, Any], row_number: int = 0) -> str:
        return render(self.config.prompt_template, row, self.config.empty_fields, row_number)

    def response(self, row: dict[str, Any], row_number: int = 0) -> str:
        return render(self.config.response_template, row, self.config.empty_fields, row_number)


class LanguageModelingEncoder:
    """Rows → {input_ids, labels}: BOS (if the tokenizer has one) + prompt + response + EOS, with
    labels -100 on the prompt unless train_on_prompt."""

    def __init__(self, tokenizer: Any, formatter: PromptFormatter, train_on_prompt: bool):
        self.tokenizer = tokenizer
        self.formatter = formatter
        self.train_on_prompt = train_on_prompt
        self.eos = ensure_eos(tokenizer)
        self.prefix = bos_prefix(tokenizer)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: str) -> list[int]:
        """What generation starts from: the same ids the prompt had in training."""
        return self.prefix + self._ids(prompt)

    def encode_row(self, row: dict[str, Any], row_number: int) -> dict[str, list[int]]:
        cfg = self.formatter.config
        if self.formatter.raw_text:
            ids = self.prefix + self._ids(str(row[cfg.text_columns[0]])) + [self.eos]
            return {"input_ids": ids, "labels": list(ids)}
        if cfg.messages_column:
            messages = row[cfg.messages_column]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise DataError(f"row {row_number}: '{cfg.messages_column}' must hold a list of "
                                "{role, content} messages.")
            ids, trained = chat_ids_and_mask(self.tokenizer, messages)
            return {"input_ids": ids, "labels": [t if (keep or self.train_on_prompt) else IGNORE
                                                 for t, keep in zip(ids, trained, strict=True)]}
        prompt = self.prompt_ids(self.formatter.prompt(row, row_number))
        response = self._ids(self.formatter.response(row, row_number)) + [self.eos]
        prompt_labels = list(prompt) if self.train_on_prompt else [IGNORE] * len(prompt)
        return {"input_ids": prompt + response, "labels": prompt_labels + response}

    def encode(self, frame: pd.DataFrame, max_length: int,
               policy: str) -> tuple[list[dict[str, list[int]]], int, int]:
        """Encoded rows, and how many were cut and dropped. `cut` keeps the first max_length
        tokens (a row left with nothing to learn is dropped); `drop` drops every long row."""
        rows, cut, dropped = [], 0, 0
        for i, row in enumerate(frame.to_dict(orient="records")):
            encoded = self.encode_row(row, i)
            too_long = len(encoded["input_ids"]) > max_length
            if too_long and policy == "cut":
                encoded = {k: v[:max_length] for k, v in encoded.items()}
            # Dropped: too long under `drop`, or nothing left to learn (the prompt filled it all).
            if (too_long and policy == "drop") or all(t == IGNORE for t in encoded["labels"][1:]):
                dropped += 1
                continue
            cut += too_long
            rows.append(encoded)
        return rows, cut, dropped




def trained_tokens(labels: Any) -> Any:
    """Mask of the next-token targets a loss counts: labels[t + 1] predicted from position t."""
    return labels[:, 1:] != IGNORE


class CausalLMDataModule(RowsDataModule):
    def __init__(self, config: DataConfig, tokenizer: Any, raw_text: bool = False,
                 train_on_prompt: bool = False, seed: int = 42, cache_dir: str | None = None,
                 evaluate_training_set: bool = False):
        super().__init__(config, seed, partial(pad_batch, pad_id=int(tokenizer.pad_token_id)),
                         tokenizer, cache_dir, evaluate_training_set)
        self.formatter = PromptFormatter(config, raw_text)
        self.encoder = LanguageModelingEncoder(tokenizer, self.formatter, train_on_prompt)

    def setup_splits(self, table: pd.DataFrame) -> None:
        cfg = self.config
        missing = [c for c in self.formatter.columns() if c not in table.columns]
        if missing:
            raise DataError(f"column(s) {missing} not found in '{cfg.path}'; columns are: "
                            f"{', '.join(map(str, table.columns))}. Fix data.prompt_template / "
                            "response_template, data.messages_column or data.text_columns.")
        frames = split_frame(table, cfg.split_column, list(cfg.split_probabilities), cfg.split_seed)
        if cfg.max_train_samples is not None and len(frames["train"]) > cfg.max_train_samples:
            frames["train"] = frames["train"].sample(n=cfg.max_train_samples, random_state=cfg.split_seed)
        encoded = self.encode_cached(
            lambda: {split: self._encode_split(frame) for split, frame in frames.items()},
            "language_modeling", "raw_text" if self.formatter.raw_text else "prompt_response",
            self.encoder.train_on_prompt, *([PACKING_ALGORITHM] if cfg.packing else []))
        for split, frame in frames.items():
            rows, n_samples, cut, dropped = encoded[split]
            if cut or dropped:
                log.warning("%s split: %d of %d samples are longer than data.max_length=%d tokens: "
                            "%d cut, %d dropped (data.truncation=%s).", split, cut + dropped,
                            len(frame), cfg.max_length, cut, dropped, cfg.truncation)
            if split in ("train", "validation") and not rows:
                fix = ("raise data.max_length or set data.truncation=cut" if cfg.truncation == "drop"
                       else "raise data.max_length (the prompts fill it)")
                raise DataError(f"no {split} sample is left after truncation: all {len(frame)} are "
                                f"over data.max_length={cfg.max_length} tokens (data.truncation="
                                f"{cfg.truncation}); {fix}.")
            self.datasets[split] = Rows(rows)
            self.sample_counts[split] = n_samples  # rows are fewer when packed
            log.info("%s split: %d samples%s", split, n_samples,
                     f" packed into {len(rows)} rows of ≤ {cfg.max_length} tokens" if cfg.packing else "")
        self.frames = frames

    def _encode_split(self, frame: pd.DataFrame) -> tuple[list[dict[str, list[int]]], int, int, int]:
        """Rows (packed if asked), the number of samples in them, and how many were cut / dropped."""
        cfg = self.config
        rows, cut, dropped = self.encoder.encode(frame, cfg.max_length, cfg.truncation)
        n_samples = len(rows)
        return (pack(rows, cfg.max_length) if cfg.packing else rows), n_samples, cut, dropped

    def loss_items(self, batch: dict[str, Any]) -> int:
        return int(trained_tokens(batch["labels"]).sum())

    def summary(self) -> dict[str, Any]:
        """What the tokenized-data cache did this run (for metrics.json)."""
        cache = self.tokenized_cache
        return {f"cache_{cache.kind}": cache.events[-1]} if cache is not None and cache.events else {}

    def validation_prompts(self, n: int) -> list[str]:
        """The first n validation prompts, rendered as in training (for sample generations)."""
        frame = self.frames.get("validation")
        if frame is None or n == 0 or self.formatter.raw_text or self.config.messages_column:
            return []
        return [self.formatter.prompt(row, i)
                for i, row in enumerate(frame.head(n).to_dict(orient="records"))]


"""Preference records → token ids → batches, for the reward model and the policy objectives
(DPO family, SimPO, ORPO, KTO).

One encoded pair is `{"prompt", "chosen", "rejected"}` token lists: the prompt is tokenized once
and each response is what follows it. A batch of B pairs is one (2B, length) tensor — every
chosen sequence, then every rejected one — so both go through one forward pass, with labels
-100 on prompt and padding. An unpaired (KTO) example is `{"prompt", "completion",
"desirable", "kl_completion"}`: its batch is the B examples, then the same B prompts with
mismatched completions (another example's, fixed when the data are encoded) for the KL estimate.

Truncation keeps the responses: a prompt longer than data.max_prompt_length keeps its last
tokens, then, while prompt + longest response overflows data.max_length, the prompt loses more
of its start (never below half of max_length), and only then are the responses cut at the end.
Under data.truncation=drop an overflowing record is dropped instead.
"""

from __future__ import annotations

import logging
import random
from functools import partial
from typing import Any

import pandas as pd
import torch

from ftexp.config.data import DataConfig
from ftexp.data.causal_lm import bos_prefix, ensure_eos
from ftexp.data.preference import (
    PreferenceExample,
    PreferencePair,
    read_pairs,
    read_unpaired,
    unpair,
)
from ftexp.data.rows import Rows, RowsDataModule
from ftexp.data.splits import split_frame
from ftexp.data.targets import IGNORE
from ftexp.data.templates import render
from ftexp.runs.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Hidden column that carries each record's position in the file through the split.
_RECORD = "_ftexp_record"
# Per-record reference log-probs (task.reference=precompute) ride in the rows under these keys.
REFERENCE_KEYS = {"pairs": ("ref_chosen", "ref_rejected"), "unpaired": ("ref_completion", "ref_kl")}


class PreferenceEncoder:
    """Prompts and responses → token ids. A text prompt is BOS + (data.prompt_template filled
    with the record, or the prompt as is); a message-list prompt is rendered by the chat
    template with the generation prompt. A response is its text + EOS after a text prompt, or,
    after messages, the chat template's rendering of the assistant turn (its end-of-turn
    tokens included). `end_with_eos=False` (reward models) leaves EOS off text responses, so the
    score is read at the response's last token, where transformers' sequence classifiers read it."""

    def __init__(self, tokenizer: Any, prompt_template: str | None, end_with_eos: bool = True):
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.eos = ensure_eos(tokenizer)
        self.end_with_eos = end_with_eos
        self.prefix = bos_prefix(tokenizer)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("these preference records hold conversations, but the tokenizer has no "
                              "chat template; set model.chat_template (a Jinja template) or use a "
                              "chat model's tokenizer.")
        out = self.tokenizer.apply_chat_template(messages, tokenize=True,
                                                 add_generation_prompt=generation_prompt)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def prompt_ids(self, prompt: Any, extra: dict[str, Any] | None = None, record: int = 0) -> list[int]:
        if isinstance(prompt, list):
            return self._chat(prompt, generation_prompt=True)
        if self.prompt_template is not None:
            prompt = render(self.prompt_template, {**(extra or {}), "prompt": prompt}, "keep", record)
        return self.prefix + self._ids(prompt)

    def response_ids(self, prompt: Any, prompt_ids: list[int], response: str, record: int = 0) -> list[int]:
        if isinstance(prompt, list):
            whole = self._chat([*prompt, {"role": "assistant", "content": response}], generation_prompt=False)
            if whole[:len(prompt_ids)] != prompt_ids:
                raise DataError(f"record {record}: the chat template does not render the prompt as a "
                                "prefix of prompt + response, so the response cannot be located.")
            response_ids = whole[len(prompt_ids):]
        else:
            response_ids = self._ids(response) + ([self.eos] if self.end_with_eos else [])
        if not self.end_with_eos:
            # A reward model's score is read at the last token. transformers' sequence classifiers
            # read it at the last token that is not the pad id, so a chat template's closing token
            # that doubles as the pad (EOS padding) is left off, or export would score another.
            while len(response_ids) > 1 and response_ids[-1] == self.tokenizer.pad_token_id:
                response_ids = response_ids[:-1]
        return response_ids

    def prompt_text(self, prompt: Any, extra: dict[str, Any] | None = None) -> str:
        """The prompt as the model sees it, as text (for sample-generation tables)."""
        return self.tokenizer.decode(self.prompt_ids(prompt, extra), skip_special_tokens=False)


def fit_lengths(prompt: list[int], responses: list[list[int]], max_length: int,
                max_prompt_length: int | None) -> tuple[list[int], list[list[int]], bool]:
    """(prompt, responses) cut to fit max_length as the module docstring says, and whether
    anything was cut."""
    original = len(prompt), [len(r) for r in responses]
    if max_prompt_length is not None:
        prompt = prompt[-max_prompt_length:]
    longest = max(len(r) for r in responses)
    if len(prompt) + longest > max_length:
        keep = max(max_length - longest, min(len(prompt), max_length // 2))
        prompt = prompt[len(prompt) - keep:]
    responses = [r[:max_length - len(prompt)] for r in responses]
    return prompt, responses, (len(prompt), [len(r) for r in responses]) != original


def encode_pairs(encoder: PreferenceEncoder, pairs: list[tuple[int, PreferencePair]], max_length: int,
                 max_prompt_length: int | None, policy: str) -> tuple[list[dict[str, Any]], int, int]:
    """Encoded pairs (record number kept under "record"), and how many were cut / dropped."""
    rows, cut, dropped = [], 0, 0
    for record, pair in pairs:
        prompt = encoder.prompt_ids(pair.prompt, pair.extra, record)
        chosen = encoder.response_ids(pair.prompt, prompt, pair.chosen, record)
        rejected = encoder.response_ids(pair.prompt, prompt, pair.rejected, record)
        prompt, (chosen, rejected), was_cut = fit_lengths(prompt, [chosen, rejected], max_length,
                                                          max_prompt_length)
        if was_cut and policy == "drop":
            dropped += 1
            continue
        cut += was_cut
        row = {"record": record, "prompt": prompt, "chosen": chosen, "rejected": rejected}
        if pair.margin is not None:
            row["margin"] = float(pair.margin)
        rows.append(row)
    return rows, cut, dropped


def encode_unpaired(encoder: PreferenceEncoder, examples: list[tuple[int, PreferenceExample]],
                    max_length: int, max_prompt_length: int | None, policy: str,
                    seed: int, split: str = "") -> tuple[list[dict[str, Any]], int, int]:
    """Encoded KTO examples, each with the completion of another example (a seeded derangement
    of the split) as its mismatched KL completion; and how many were cut / dropped. The example
    alone decides the cut: the borrowed completion only gets the room left."""
    if not examples:
        return [], 0, 0
    if len(examples) < 2:
        raise DataError(f"the {split} split has 1 KTO example; the KL estimate needs at least 2 "
                        "(each prompt with another example's completion): add examples or change "
                        "the split.")
    encoded = []
    for record, ex in examples:
        prompt = encoder.prompt_ids(ex.prompt, ex.extra, record)
        encoded.append((record, ex, prompt, encoder.response_ids(ex.prompt, prompt, ex.completion, record)))
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    partner = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # no fixed point
    rows, cut, dropped = [], 0, 0
    for i, (record, ex, prompt, completion) in enumerate(encoded):
        prompt, (completion,), was_cut = fit_lengths(prompt, [completion], max_length, max_prompt_length)
        if was_cut and policy == "drop":
            dropped += 1
            continue
        cut += was_cut
        mismatched = encoded[partner[i]][3][:max_length - len(prompt)]
        rows.append({"record": record, "prompt": prompt, "completion": completion,
                     "kl_completion": mismatched, "desirable": bool(ex.desirable)})
    return rows, cut, dropped


def _sequences(prompts: list[list[int]], responses: list[list[int]],
               pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + response rows with labels on the response only."""
    length = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    labels = torch.full((len(prompts), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        labels[i, len(p):n] = torch.tensor(r)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _references(rows: list[dict[str, Any]], keys: tuple[str, str]) -> dict[str, torch.Tensor]:
    if keys[0] not in rows[0]:
        return {}
    # float32, as the log-probs a reference pass during training gives.
    return {key: torch.tensor([row[key] for row in rows], dtype=torch.float32) for key in keys}


def collate_pairs(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """B pairs → one batch of 2B sequences: rows [0, B) chosen, [B, 2B) rejected."""
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    batch = _sequences(prompts, responses, pad_id)
    batch["record"] = torch.tensor([r["record"] for r in rows])
    if "margin" in rows[0]:
        batch["margin"] = torch.tensor([r["margin"] for r in rows], dtype=torch.float32)
    return {**batch, **_references(rows, REFERENCE_KEYS["pairs"])}


def chosen_prompt_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Labels on the prompt tokens of a pairs batch's chosen rows (its first half), IGNORE
    everywhere else: what TRL's ORPO adds to the chosen response in its NLL term."""
    labels = batch["labels"]
    prompt = (labels == IGNORE) & batch["attention_mask"].bool()
    out = torch.where(prompt, batch["input_ids"], torch.full_like(labels, IGNORE))
    out[len(out) // 2:] = IGNORE
    return out


def collate_unpaired(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """B examples → 2B sequences: rows [0, B) the examples, [B, 2B) the same prompts with their
    mismatched completions (KL estimate)."""
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["completion"] for r in rows] + [r["kl_completion"] for r in rows]
    batch = _sequences(prompts, responses, pad_id)
    batch["record"] = torch.tensor([r["record"] for r in rows])
    batch["desirable"] = torch.tensor([r["desirable"] for r in rows])
    return {**batch, **_references(rows, REFERENCE_KEYS["unpaired"])}


class PreferenceDataModule(RowsDataModule):
    """Reads a preference file (any format ftexp.data.preference knows), splits it, and serves
    batches of pairs (`kind="pairs"`) or of unpaired examples (`kind="unpaired"`).

    Records are read from the whole file before it is split, so an error names the record's
    position in the file (from 1)."""

    def __init__(self, config: DataConfig, tokenizer: Any, kind: str, seed: int = 42,
                 cache_dir: str | None = None, evaluate_training_set: bool = False,
                 end_with_eos: bool = True):
        collate = collate_pairs if kind == "pairs" else collate_unpaired
        super().__init__(config, seed, partial(collate, pad_id=int(tokenizer.pad_token_id)),
                         tokenizer, cache_dir, evaluate_training_set)
        self.kind = kind
        self.encoder = PreferenceEncoder(tokenizer, config.prompt_template, end_with_eos)
        # Per file row (from 1: records[n - 1]), the records it holds: one, or two when unpaired.
        self.records: list[list[Any]] = []
        self.prompt_kind = "text"

    def setup_splits(self, table: pd.DataFrame) -> None:
        cfg = self.config
        if self.kind == "pairs":
            self.records = [[pair] for pair in read_pairs(table, cfg.preference)]
        elif cfg.preference.unpair:  # KTO on pairs: a desirable and an undesirable example each
            self.records = [unpair([pair]) for pair in read_pairs(table, cfg.preference)]
        else:
            self.records = [[example] for example in read_unpaired(table, cfg.preference)]
        # How prompts reach the model — "chat" (messages, through the chat template) or "text" —
        # kept with the run so generation renders new prompts the same way.
        first = self.records[0][0] if self.records else None
        self.prompt_kind = "chat" if first is not None and isinstance(first.prompt, list) else "text"
        numbered = table.assign(**{_RECORD: range(1, len(table) + 1)})
        frames = split_frame(numbered, cfg.split_column, list(cfg.split_probabilities), cfg.split_seed)
        if cfg.max_train_samples is not None and len(frames["train"]) > cfg.max_train_samples:
            frames["train"] = frames["train"].sample(n=cfg.max_train_samples, random_state=cfg.split_seed)
        encoded = self.encode_cached(lambda: {split: self._encode_split(frame, split)
                                              for split, frame in frames.items()},
                                     "preference", self.kind, self.encoder.end_with_eos)
        for split, frame in frames.items():
            rows, cut, dropped = encoded[split]
            if cut or dropped:
                log.warning("%s split: %d of %d records are longer than data.max_length=%d tokens "
                            "(or their prompt than data.max_prompt_length): %d cut, %d dropped "
                            "(data.truncation=%s).", split, cut + dropped, len(frame), cfg.max_length,
                            cut, dropped, cfg.truncation)
            if split in ("train", "validation") and not rows:
                limits = f"data.max_length={cfg.max_length}" + (
                    f" (or their prompt over data.max_prompt_length={cfg.max_prompt_length})"
                    if cfg.max_prompt_length is not None else "")
                raise DataError(f"no {split} record is left after truncation: all {len(frame)} are over "
                                f"{limits} tokens under data.truncation=drop; raise the limit or set "
                                "data.truncation=cut.")
            self.datasets[split] = Rows(rows)
            log.info("%s split: %d %s", split, len(rows),
                     "pairs" if self.kind == "pairs" else "examples")
        # The records that were kept, in the rows' order (prediction files line up with them).
        self.frames = {split: frame[frame[_RECORD].isin({row["record"] for row in self.datasets[split].rows})]
                       .drop(columns=[_RECORD]).reset_index(drop=True) for split, frame in frames.items()}

    def _encode_split(self, frame: pd.DataFrame, split: str) -> tuple[list[dict[str, Any]], int, int]:
        cfg = self.config
        chosen = [(int(n), record) for n in frame[_RECORD] for record in self.records[int(n) - 1]]
        if self.kind == "pairs":
            return encode_pairs(self.encoder, chosen, cfg.max_length, cfg.max_prompt_length, cfg.truncation)
        return encode_unpaired(self.encoder, chosen, cfg.max_length, cfg.max_prompt_length,
                               cfg.truncation, cfg.split_seed, split)

    def loss_items(self, batch: dict[str, Any]) -> int:
        """Losses average over pairs (examples), whatever their lengths."""
        return len(batch["record"])

    def summary(self) -> dict[str, Any]:
        cache = self.tokenized_cache
        return {f"cache_{cache.kind}": cache.events[-1]} if cache is not None and cache.events else {}

    def validation_prompts(self, n: int) -> tuple[list[str], list[list[int]]]:
        """The first n validation prompts (as text, and as the ids training used), for sample
        generations."""
        rows = list(self.datasets["validation"].rows[:n]) if n else []
        records = [self.records[row["record"] - 1][0] for row in rows]
        texts = [self.encoder.prompt_text(r.prompt, r.extra) for r in records]
        return texts, [row["prompt"] for row in rows]


def encode_responses(encoder: PreferenceEncoder, prompts: list[Any], responses: list[str], max_length: int,
                     max_prompt_length: int | None) -> list[dict[str, Any]]:
    """(prompt, response) rows to score one by one (a reward model's predictions), encoded and cut
    as in training."""
    rows = []
    for record, (prompt, response) in enumerate(zip(prompts, responses, strict=True), start=1):
        prompt_ids = encoder.prompt_ids(prompt, None, record)
        response_ids = encoder.response_ids(prompt, prompt_ids, response, record)
        prompt_ids, (response_ids,), _ = fit_lengths(prompt_ids, [response_ids], max_length,
                                                     max_prompt_length)
        rows.append({"prompt": prompt_ids, "response": response_ids})
    return rows


def collate_responses(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    return _sequences([r["prompt"] for r in rows], [r["response"] for r in rows], pad_id)

"""Turn text columns into token ids the same way for training and for prediction."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ftexp.runs.errors import DataError


def check_text_columns(frame: pd.DataFrame, text_columns: list[str], where: str) -> None:
    missing = [c for c in text_columns if c not in frame.columns]
    if missing:
        raise DataError(f"text column(s) {missing} not found in {where}; columns are: "
                        f"{', '.join(map(str, frame.columns))}. Set data.text_columns.")


def texts_of(frame: pd.DataFrame, text_columns: list[str]) -> list[list[str]]:
    """One list of strings per text column; empty cells become empty strings."""
    return [frame[c].fillna("").astype(str).tolist() for c in text_columns]


def encode(tokenizer: Any, frame: pd.DataFrame, text_columns: list[str],
           max_length: int) -> tuple[list[dict[str, list[int]]], int]:
    """Tokenize rows without padding (the collator pads per batch); also count truncated rows.

    One column is tokenized alone, two as a text pair (sentence-pair tasks), more are joined
    with the tokenizer's separator token. Rows longer than max_length are cut, not dropped.
    """
    if len(frame) == 0:
        return [], 0
    columns = texts_of(frame, text_columns)
    if len(columns) > 2:
        sep = f" {tokenizer.sep_token} " if tokenizer.sep_token else " \n "
        columns = [[sep.join(parts) for parts in zip(*columns, strict=True)]]
    # One untruncated pass tells which rows are too long; only those are encoded again, cut.
    encoded = dict(tokenizer(*columns))
    too_long = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) > max_length]
    if too_long:
        cut = tokenizer(*[[col[i] for i in too_long] for col in columns],
                        truncation=True, max_length=max_length)
        for key in encoded:
            for j, i in enumerate(too_long):
                encoded[key][i] = cut[key][j]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(frame))], len(too_long)

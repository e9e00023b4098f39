"""Split one table into train / validation / test, by a column or at random with a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftexp.runs.errors import DataError

SPLITS = ("train", "validation", "test")
# Names people use for the same three splits.
_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
            "valid": "validation", "dev": "validation", "test": "test", "testing": "test"}


def split_by_column(frame: pd.DataFrame, column: str) -> dict[str, pd.DataFrame]:
    if column not in frame.columns:
        raise DataError(f"split column '{column}' is not in the data; columns are: "
                        f"{', '.join(map(str, frame.columns))}. Set data.split_column=null "
                        "to split at random.")
    names = frame[column].astype(str).str.strip().str.lower()
    unknown = sorted(set(names) - set(_ALIASES))
    if unknown:
        raise DataError(f"split column '{column}' holds {unknown[:5]}; use train, validation "
                        "(or val/dev) and test.")
    canonical = names.map(_ALIASES)
    return {s: frame[canonical == s].reset_index(drop=True) for s in SPLITS}


def split_at_random(frame: pd.DataFrame, probabilities: list[float], seed: int) -> dict[str, pd.DataFrame]:
    """Shuffle with `seed`, then cut at the cumulative probabilities (sizes rounded down)."""
    order = np.random.default_rng(seed).permutation(len(frame))
    n_train = int(probabilities[0] * len(frame))
    n_val = int(probabilities[1] * len(frame))
    if probabilities[2] == 0:
        n_val = len(frame) - n_train
    cuts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}
    return {s: frame.iloc[idx].reset_index(drop=True) for s, idx in cuts.items()}


def split_frame(frame: pd.DataFrame, split_column: str | None, probabilities: list[float],
                seed: int) -> dict[str, pd.DataFrame]:
    splits = (split_by_column(frame, split_column) if split_column
              else split_at_random(frame, probabilities, seed))
    for name in ("train", "validation"):
        if len(splits[name]) == 0:
            raise DataError(
                f"the {name} split is empty ({len(frame)} rows in all); "
                + ("give some rows that split name in the split column."
                   if split_column else "raise its share in data.split_probabilities.")
            )
    return splits

"""What a row's label column becomes for training: a class id, a multi-hot vector, or a number.

Each kind is fitted on the train split (vocabulary, or mean/std for numbers), checks the other
splits against it, and describes itself as a plain dict. That dict goes into the checkpoint's
hyper-parameters and `labels.json`, so prediction decodes outputs exactly as training encoded them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ftexp.runs.errors import DataError

IGNORE = -100  # a row without a label: skipped by the loss and the metrics

SINGLE_LABEL, MULTI_LABEL, REGRESSION = "single_label", "multi_label", "regression"


def _sorted_labels(values: set[Any]) -> list[Any]:
    return sorted(values, key=lambda v: (str(type(v)), v))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_label_list(value: Any, separator: str | None) -> list[Any] | None:
    """A multi-label cell as a list: a list / array as is, a string split by `separator`."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if _is_missing(value):
        return None
    if isinstance(value, str) and separator is not None:
        return [part.strip() for part in value.split(separator) if part.strip()]
    return [value]


def is_multi_label(series: pd.Series, separator: str | None) -> bool:
    """Lists in the label column (JSON / Parquet), or a separator set for text files."""
    return separator is not None or any(isinstance(v, (list, tuple, np.ndarray)) for v in series)


def _check_train_complete(train: pd.Series, column: str) -> None:
    empty = int(sum(_is_missing(v) for v in train))
    if empty:
        raise DataError(f"label column '{column}' has {empty} empty (or NaN) cells in the train "
                        "split; fill or drop those rows.")


class SingleLabel:
    """One class per row; labels may be ints or strings, kept in sorted order."""

    kind = SINGLE_LABEL

    def __init__(self, labels: list[Any]):
        self.labels = list(labels)
        self._ids = {label: i for i, label in enumerate(self.labels)}

    @classmethod
    def fit(cls, train: pd.Series, others: dict[str, pd.Series], column: str) -> SingleLabel:
        _check_train_complete(train, column)
        labels = _sorted_labels(set(train.tolist()))
        if len(labels) < 2:
            raise DataError(f"the train split has a single class ({labels[0]!r}) in '{column}'; "
                            "a classifier needs at least two.")
        known = set(labels)
        for split, series in others.items():
            unseen = sorted({v for v in series.tolist() if not _is_missing(v) and v not in known}, key=str)
            if unseen:
                raise DataError(f"labels {unseen[:5]} in the {split} split never occur in train; "
                                "re-split the data or drop those rows.")
        return cls(labels)

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    def encode(self, series: pd.Series) -> list[int]:
        return [self._ids.get(v, IGNORE) for v in series.tolist()]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": self.labels}

    @staticmethod
    def trained(labels: Any) -> Any:
        """Mask of the label entries a loss counts: rows with a label."""
        return labels != IGNORE


class MultiLabel:
    """Any number of classes per row (a list cell, or a string split by data.label_separator).
    An empty cell is a row with none of the classes, a legitimate answer (CSV cannot tell an
    empty list from a missing value)."""

    kind = MULTI_LABEL

    def __init__(self, labels: list[Any], separator: str | None = None):
        self.labels = list(labels)
        self.separator = separator
        self._ids = {label: i for i, label in enumerate(self.labels)}

    @classmethod
    def fit(cls, train: pd.Series, others: dict[str, pd.Series], column: str,
            separator: str | None = None) -> MultiLabel:
        seen = {label for v in train for label in _as_label_list(v, separator) or []}
        if len(seen) < 2:
            raise DataError(f"the train split has {len(seen)} distinct label(s) in '{column}'; "
                            "a multi-label classifier needs at least two.")
        for split, series in others.items():
            unseen = {label for v in series for label in _as_label_list(v, separator) or []} - seen
            if unseen:
                raise DataError(f"labels {sorted(unseen, key=str)[:5]} in the {split} split never "
                                "occur in train; re-split the data or drop those rows.")
        return cls(_sorted_labels(seen), separator)

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    def encode(self, series: pd.Series) -> list[list[float]]:
        rows = []
        for value in series.tolist():
            hot = [0.0] * len(self.labels)
            for label in _as_label_list(value, self.separator) or []:
                hot[self._ids[label]] = 1.0
            rows.append(hot)
        return rows

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": self.labels, "separator": self.separator}

    @staticmethod
    def trained(labels: Any) -> Any:
        """Every class of every row counts (no class is a legitimate answer)."""
        import torch

        return torch.ones_like(labels, dtype=torch.bool)


class Numeric:
    """A number per row. The head learns the z-scored target (train mean/std), which keeps the
    loss scale independent of the data's units; predictions are mapped back."""

    kind = REGRESSION
    num_outputs = 1

    def __init__(self, mean: float, std: float):
        self.mean, self.std = float(mean), float(std)

    @staticmethod
    def _numbers(series: pd.Series, column: str, split: str) -> pd.Series:
        numbers = pd.to_numeric(series, errors="coerce")
        # NaN read as text ("nan", "NaN") counts as not a number; an empty cell is missing.
        bad = series[(numbers.isna() & series.notna()) | numbers.isin([np.inf, -np.inf])]
        if len(bad):
            example = bad.iloc[0]
            example = example.item() if hasattr(example, "item") else example  # numpy → Python
            raise DataError(f"task=regression needs numbers in '{column}', but the {split} split has "
                            f"{len(bad)} that are not (e.g. {example!r}; NaN and infinities "
                            "count as not); clean them (an empty cell means no target) or use "
                            "task=classification.")
        return numbers.astype(float)

    @classmethod
    def fit(cls, train: pd.Series, others: dict[str, pd.Series], column: str) -> Numeric:
        _check_train_complete(train, column)
        numbers = cls._numbers(train, column, "train")
        for split, series in others.items():
            cls._numbers(series, column, split)
        std = float(numbers.std(ddof=0))
        if not std > 0:
            raise DataError(f"every train row has the same '{column}' value ({numbers.iloc[0]}); "
                            "there is nothing to regress.")
        return cls(float(numbers.mean()), std)

    def encode(self, series: pd.Series) -> list[float]:
        # Missing targets stay NaN; the regression task masks them out of loss and metrics.
        return pd.to_numeric(series, errors="coerce").astype(float).tolist()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean, "std": self.std}

    @staticmethod
    def trained(labels: Any) -> Any:
        """Rows with a number (missing targets stay NaN)."""
        import torch

        return torch.isfinite(labels)


def _check_validation_labelled(others: dict[str, pd.Series], column: str) -> None:
    """Rows without a target are left out of the metrics; a validation split of only such rows
    would leave nothing to choose the best checkpoint by."""
    series = others.get("validation")
    if series is not None and len(series) and all(_is_missing(v) for v in series):
        raise DataError(f"every row of the validation split has an empty '{column}', so there is "
                        "nothing to validate on; give those rows labels or re-split the data.")


def fit_targets(labels: str, train: pd.Series, others: dict[str, pd.Series], column: str,
                separator: str | None = None) -> SingleLabel | MultiLabel | Numeric:
    """`labels`: what the task reads the column as — "classes" (one or, with lists or a
    separator, several per row) or "number" (the task's registry entry says)."""
    numeric = labels == "number"
    if numeric or not is_multi_label(train, separator):
        _check_validation_labelled(others, column)
    if numeric:
        return Numeric.fit(train, others, column)
    if is_multi_label(train, separator):
        return MultiLabel.fit(train, others, column, separator)
    return SingleLabel.fit(train, others, column)

"""Per-example outputs a run dir keeps, read for paired comparisons: the test predictions of
classifiers and regressors (`predictions_test.csv`: the test rows with the predicted label and
class probabilities, or the predicted number) and causal-LM per-example losses
(`losses_test.jsonl`, else `losses_validation.jsonl`).

Each run's examples carry a fingerprint of the test set (the texts and labels in order, or the
LM targets' token digests): two runs are paired only when their fingerprints agree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftexp.runs import run_dir

CLASSIFICATION, REGRESSION, LANGUAGE_MODEL = "classification", "regression", "language model"
_PREDICTION_COLUMNS = ("predicted_label", "predicted_labels", "prediction", "score", "score_chosen",
                       "score_rejected")


@dataclass
class Examples:
    kind: str
    fingerprint: str
    texts: list[str]
    truth: np.ndarray  # class indices, numbers, or (language model) nothing
    pred: np.ndarray | None = None  # class indices or numbers
    probs: np.ndarray | None = None  # (examples, classes)
    classes: list[str] = field(default_factory=list)
    losses: np.ndarray | None = None  # per-example mean token loss
    source: str = ""  # the file read

    def __len__(self) -> int:
        return len(self.truth) if self.losses is None else len(self.losses)


def _digest(parts: list[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "replace") + b"\x1e")
    return h.hexdigest()[:12]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _lm_losses(path: Path) -> Examples | None:
    for split in ("test", "validation"):
        file = path / run_dir.EXAMPLE_LOSSES_FILE.format(split=split)
        if not file.is_file():
            continue
        try:
            rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError):
            return None
        # Packing may change the order samples are scored in: samples are matched by their target
        # tokens' digest, not by place.
        rows.sort(key=lambda r: str(r.get("target", "")))
        targets = [str(r.get("target", "")) for r in rows]
        return Examples(LANGUAGE_MODEL, _digest([split, *targets]), texts=[f"{split} #{r['example']}"
                                                                             for r in rows],
                        truth=np.zeros(len(rows)), losses=np.array([float(r["loss"]) for r in rows]),
                        source=file.name)
    return None


def load_examples(path: Path | None, config: dict[str, Any]) -> Examples | None:
    """A run's per-example outputs, or None when it kept none the report can pair (multi-label and
    preference predictions are not paired)."""
    import pandas as pd

    if path is None:
        return None
    file = path / run_dir.PREDICTIONS_FILE
    if not file.is_file():
        return _lm_losses(path)
    data = config.get("data") or {}
    label = data.get("label_column") or "label"
    try:
        frame = pd.read_csv(file, dtype={label: str, "predicted_label": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if label not in frame:
        return None
    text_columns = [c for c in (data.get("text_columns") or []) if c in frame] or [
        c for c in frame.columns if c != label and c not in _PREDICTION_COLUMNS and not c.startswith("prob_")]
    texts = (frame[text_columns].astype(str).agg(" | ".join, axis=1).tolist() if text_columns
             else [""] * len(frame))
    if "predicted_label" in frame:
        return _classification(path, frame, label, texts, file.name)
    if "prediction" in frame:
        truth = pd.to_numeric(frame[label], errors="coerce").to_numpy(float)
        keep = np.isfinite(truth)  # rows without a target are left out of metrics too
        return Examples(REGRESSION, _digest([f"{t}\x1f{y!r}" for t, y in zip(texts, truth, strict=True)]),
                        texts=[t for t, k in zip(texts, keep, strict=True) if k], truth=truth[keep],
                        pred=frame["prediction"].to_numpy(float)[keep], source=file.name)
    return None


def _classification(path: Path, frame: Any, label: str, texts: list[str], source: str) -> Examples | None:
    target = _read_json(path / run_dir.LABELS_FILE) or {}
    prob_columns = [c for c in frame.columns if c.startswith("prob_")]
    classes = [str(c) for c in target.get("labels") or []] or [c.removeprefix("prob_") for c in prob_columns]
    index = {c: i for i, c in enumerate(classes)}
    truth_text = frame[label].tolist()
    keep = [t != "" for t in truth_text]  # rows without a label are left out of metrics too
    if not all(p in index for p in frame["predicted_label"]) or not all(
            t in index for t, k in zip(truth_text, keep, strict=True) if k):
        return None  # labels the run's label list does not hold: not this report's to guess
    rows = [i for i, k in enumerate(keep) if k]
    probs = None
    if len(prob_columns) == len(classes) and prob_columns:
        probs = frame[[f"prob_{c}" for c in classes]].to_numpy(float)[rows]
    fingerprint = _digest([f"{texts[i]}\x1f{truth_text[i]}" for i in rows])
    return Examples(CLASSIFICATION, fingerprint, texts=[texts[i] for i in rows],
                    truth=np.array([index[truth_text[i]] for i in rows], dtype=np.int64),
                    pred=np.array([index[frame["predicted_label"].iloc[i]] for i in rows], dtype=np.int64),
                    probs=probs, classes=classes, source=source)


def generations(path: Path | None) -> list[dict[str, Any]]:
    """The sample generations of a run's latest evaluation (generations.jsonl), in prompt order."""
    file = path / run_dir.GENERATIONS_FILE if path is not None else None
    if file is None or not file.is_file():
        return []
    rows = []
    for line in file.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not rows:
        return []
    last = max(int(r.get("step", 0)) for r in rows)
    return [r for r in rows if int(r.get("step", 0)) == last]


def environment(path: Path | None) -> dict[str, Any]:
    """environment.json: package versions and the git commit the run was made with."""
    return (_read_json(path / run_dir.ENVIRONMENT_FILE) or {}) if path is not None else {}

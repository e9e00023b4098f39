"""A classifier or regressor run scored on another labelled file (`ftexp.evaluate <run>
data.path=<file>`): its predictions per row, and the scores — accuracy, macro-F1 and the confusion
matrix, or MSE, MAE and R². Written like the harness's (ftexp.evaluation.harness): metrics.json
keys eval/<file stem>/<metric>, eval/results.json, and eval/<file stem>.jsonl with one record per
row (doc_id = the row's index, its 0/1 `acc` or its `squared_error`), so the report pairs two runs
on the file's rows as it pairs benchmark items."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ftexp.evaluation.harness import EVAL_DIR, record_tasks
from ftexp.runs import atomic, run_dir
from ftexp.runs.errors import FtexpError

Scores = tuple[dict[str, float], list[dict[str, Any]], dict[str, Any]]  # (scores, per-row records, extra)


def _class_scores(truth: list[str], predicted: list[str]) -> Scores:
    classes = sorted(set(truth) | set(predicted))
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    hits = np.diag(matrix)
    precision = np.divide(hits, matrix.sum(0), out=np.zeros(len(classes)), where=matrix.sum(0) > 0)
    recall = np.divide(hits, matrix.sum(1), out=np.zeros(len(classes)), where=matrix.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(classes)),
                   where=precision + recall > 0)
    present = matrix.sum(1) > 0  # macro-F1 over the classes the file holds, as sklearn's
    scores = {"acc": float(hits.sum() / matrix.sum()), "f1_macro": float(f1[present].mean())}
    items = [{"doc_id": i, "label": t, "prediction": p, "acc": float(t == p)}
             for i, (t, p) in enumerate(zip(truth, predicted, strict=True))]
    return scores, items, {"classes": classes, "confusion": matrix.tolist()}


def _number_scores(truth: np.ndarray, predicted: np.ndarray) -> Scores:
    errors = predicted - truth
    total = float(((truth - truth.mean()) ** 2).sum())
    scores = {"mse": float((errors ** 2).mean()), "mae": float(np.abs(errors).mean()),
              "r2": 1 - float((errors ** 2).sum()) / total if total > 0 else float("nan")}
    items = [{"doc_id": i, "label": float(t), "prediction": float(p), "squared_error": float(e ** 2)}
             for i, (t, p, e) in enumerate(zip(truth, predicted, errors, strict=True))]
    return scores, items, {}


def score_file(run: Path, data_path: Path, out: Path, batch_size: int = 64) -> dict[str, float]:
    """Predict every row of `data_path` with the run's best weights and score the predictions
    against the file's label column; write the score files under `out`."""
    from omegaconf import OmegaConf

    from ftexp.data.readers import read_table
    from ftexp.predict import predict_file
    from ftexp.tasks.registry import get_task

    cfg = OmegaConf.load(run / run_dir.CONFIG_FILE)
    spec, label = get_task(cfg.task.name), cfg.data.label_column
    if spec.labels not in ("classes", "number"):
        raise FtexpError(f"'{run}' is a task={spec.name} run: data.path= scores classifiers and "
                         "regressors; score language models with eval.tasks=[...].")
    frame = read_table(data_path)
    if label not in frame.columns:
        raise FtexpError(f"'{data_path}' has no label column '{label}' (the run's data.label_column); "
                         f"its columns: {', '.join(map(str, frame.columns))}.")
    if spec.labels == "classes" and frame[label].map(lambda v: isinstance(v, (list, tuple))).any():
        raise FtexpError(f"'{data_path}' holds several labels per row; scoring another file supports "
                         "single-label classifiers and regressors.")
    folder = out / EVAL_DIR
    name = data_path.stem
    predictions = predict_file(run, data_path, folder / f"{name}_predictions.csv", batch_size)
    if spec.labels == "classes":
        scores, items, extra = _class_scores([str(v) for v in frame[label]],
                                             [str(v) for v in predictions["predicted_label"]])
        higher = {"acc": True, "f1_macro": True}
    else:
        scores, items, extra = _number_scores(frame[label].to_numpy(float),
                                              predictions["prediction"].to_numpy(float))
        higher = {"mse": False, "mae": False, "r2": True}
    atomic.write_text(folder / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in items))
    # The file's content hash stands for a benchmark's version: two runs pair only on the same rows.
    entry = {"version": hashlib.sha256(data_path.read_bytes()).hexdigest()[:16], "num_fewshot": 0,
             "limit": None, "n_samples": len(items), "output_type": spec.name, "path": str(data_path),
             "metrics": scores, "stderr": {}, "higher_is_better": higher, **extra}
    record_tasks(folder, {name: entry}, f"run {run.name}")
    return {f"eval/{name}/{metric}": value for metric, value in scores.items()}

"""Statistics of a report's comparisons: pure functions of arrays (no I/O).

- `seed_spread`: a configuration's metric over its seeds — mean ± std and a bootstrap CI of the mean;
- `paired_bootstrap` and the `compare_*` functions: the difference between two configurations on
  the same test examples, with a CI from resampling examples (both sides share each resample) and a
  p-value (McNemar's exact test on per-example correctness for classification, a sign-flip
  permutation test of the per-example differences for errors and losses);
- `majority_vote`: one prediction per example from several seeds of a configuration;
- `per_class`, `confusion`, `calibration`: what a classifier gets right, per class and by confidence.

Bootstrap intervals are percentile intervals (scipy.stats.bootstrap, method="percentile"): they
are reproducible by hand from the seed, and they need no jackknife, whose n evaluations of macro-F1
over n examples would cost O(n²) on a large test set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0
ALPHA = 1 - CONFIDENCE
# Resampled values held at once (resamples × examples per batch): bounds memory on large test
# sets; batches draw the same indices as one big draw, so results do not depend on it.
_BATCH_VALUES = 4_000_000


@dataclass(frozen=True)
class Spread:
    """A metric over the seeds of one configuration."""
    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for one seed
    low: float | None  # bootstrap CI of the mean; None for one seed
    high: float | None


@dataclass(frozen=True)
class Difference:
    """A − B on one metric over paired examples."""
    metric: str
    estimate: float
    low: float
    high: float
    p_value: float | None
    test: str  # what gave the p-value ("McNemar", "permutation"), "" when none
    higher_is_better: bool
    scale: float = 1.0  # shown × scale: 100 for accuracy points
    unit: str = ""
    detail: str = ""  # e.g. the discordant counts

    @property
    def within_noise(self) -> bool:
        """Noise unless the CI excludes 0 and the test (when there is one) rejects at ALPHA: both
        must agree before one configuration is called better."""
        excludes_zero = self.low > 0 or self.high < 0
        rejects = self.p_value is None or self.p_value < ALPHA
        return not (excludes_zero and rejects)

    @property
    def a_better(self) -> bool:
        return (self.estimate > 0) == self.higher_is_better


def seed_spread(values: Sequence[float], confidence: float = CONFIDENCE, n_resamples: int = RESAMPLES,
                seed: int = SEED) -> Spread:
    """Mean, sample std and a percentile-bootstrap CI of the mean over seeds. With 2–5 seeds the CI
    can only take a few values: it shows the spread, it is no substitute for more seeds."""
    from scipy.stats import bootstrap

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return Spread(0, math.nan, None, None, None)
    if len(x) == 1:
        return Spread(1, float(x[0]), None, None, None)
    if np.all(x == x[0]):  # every resample equals the mean: scipy warns of a degenerate sample
        return Spread(len(x), float(x[0]), 0.0, float(x[0]), float(x[0]))
    result = bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                       method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Spread(len(x), float(x.mean()), float(x.std(ddof=1)), float(ci.low), float(ci.high))


def paired_bootstrap(statistic: Callable[..., np.ndarray], samples: Sequence[np.ndarray],
                     confidence: float = CONFIDENCE, n_resamples: int = RESAMPLES,
                     seed: int = SEED) -> tuple[Any, Any, Any]:
    """(statistic on the data, CI low, CI high): examples resampled with replacement, the same
    indices for every array (scipy's paired bootstrap). `statistic(*arrays, axis=-1)` is vectorized;
    floats for a scalar statistic, arrays for one that returns several values (one resampling)."""
    from scipy.stats import bootstrap

    samples = [np.asarray(s) for s in samples]
    estimate = np.asarray(statistic(*samples, axis=-1), dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate resample distribution (all equal) is fine here
        result = bootstrap(samples, statistic, paired=True, vectorized=True, n_resamples=n_resamples,
                           batch=max(1, _BATCH_VALUES // max(len(samples[0]), 1)),
                           confidence_level=confidence, method="percentile",
                           rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    if estimate.ndim == 0:
        return float(estimate), float(ci.low), float(ci.high)
    return estimate, np.asarray(ci.low, dtype=float), np.asarray(ci.high, dtype=float)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """(A right & B wrong, A wrong & B right, exact McNemar p-value): a two-sided binomial test
    of the discordant pairs (statsmodels)."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:  # no discordant example: nothing tells the two apart
        return 0, 0, 1.0
    table = [[int(np.sum(a & b)), only_a], [only_b, int(np.sum(~a & ~b))]]
    return only_a, only_b, float(mcnemar(table, exact=True).pvalue)


def sign_flip_p(differences: np.ndarray, n_resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Two-sided p-value that paired differences have mean 0: each difference's sign flipped at
    random (scipy's one-sample permutation test)."""
    from scipy.stats import permutation_test

    d = np.asarray(differences, dtype=float)
    if not np.any(d):
        return 1.0
    result = permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                              n_resamples=n_resamples, batch=max(1, _BATCH_VALUES // len(d)),
                              rng=np.random.default_rng(seed))
    return float(result.pvalue)


def _accuracy_diff(y: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a == y, axis=axis) - np.mean(b == y, axis=axis)


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int, axis: int = -1) -> np.ndarray:
    """Macro-F1 over the last axis (vectorized over resamples), averaged like torchmetrics'
    metric in metrics.json: classes never true nor predicted are left out of the mean."""
    y, pred = np.moveaxis(np.asarray(y), axis, -1), np.moveaxis(np.asarray(pred), axis, -1)
    lead, n = y.shape[:-1], y.shape[-1]
    rows = int(np.prod(lead))
    # One confusion matrix per resample from a single bincount: one pass over the values.
    cells = (np.arange(rows)[:, None] * n_classes + y.reshape(rows, n)) * n_classes + pred.reshape(rows, n)
    counts = np.bincount(cells.ravel(), minlength=rows * n_classes * n_classes).reshape(
        rows, n_classes, n_classes)
    tp = np.diagonal(counts, axis1=1, axis2=2)
    denom = counts.sum(axis=1) + counts.sum(axis=2)  # 2·tp + fp + fn
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    return (f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)).reshape(lead)


def compare_classification(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int,
                           n_resamples: int = RESAMPLES, seed: int = SEED) -> list[Difference]:
    """Accuracy (points) with McNemar's exact test, and macro-F1 (points), A − B; labels as class
    indices."""
    y, a, b = (np.asarray(v, dtype=np.int64) for v in (y, pred_a, pred_b))
    only_a, only_b, p = mcnemar_exact(a == y, b == y)

    def differences(y: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        # Both from the same resamples: one bootstrap, half the work.
        return np.stack([_accuracy_diff(y, a, b, axis),
                         macro_f1(y, a, n_classes, axis) - macro_f1(y, b, n_classes, axis)])

    estimate, low, high = paired_bootstrap(differences, (y, a, b), n_resamples=n_resamples, seed=seed)
    detail = f"{only_a} examples only A gets right, {only_b} only B"
    return [Difference("accuracy", float(estimate[0]), float(low[0]), float(high[0]), p_value=p,
                       test="McNemar", higher_is_better=True, scale=100, unit="points", detail=detail),
            Difference("macro-F1", float(estimate[1]), float(low[1]), float(high[1]), p_value=None, test="",
                       higher_is_better=True, scale=100, unit="points")]


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def compare_per_example(name: str, values_a: np.ndarray, values_b: np.ndarray,
                        n_resamples: int = RESAMPLES, seed: int = SEED) -> Difference:
    """A − B of the mean of a per-example quantity where lower is better (an error, a loss), with a
    sign-flip permutation p-value."""
    a, b = np.asarray(values_a, float), np.asarray(values_b, float)
    estimate, low, high = paired_bootstrap(_mean_diff, (a, b), n_resamples=n_resamples, seed=seed)
    return Difference(name, estimate, low, high, p_value=sign_flip_p(a - b, n_resamples, seed),
                      test="permutation", higher_is_better=False)


def compare_regression(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                       n_resamples: int = RESAMPLES, seed: int = SEED) -> list[Difference]:
    """MAE and MSE, A − B (lower is better)."""
    y, a, b = (np.asarray(v, float) for v in (y, pred_a, pred_b))
    return [compare_per_example("MAE", np.abs(a - y), np.abs(b - y), n_resamples, seed),
            compare_per_example("MSE", (a - y) ** 2, (b - y) ** 2, n_resamples, seed)]


def majority_vote(preds: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """One class per example from (seeds, examples) predicted class indices: the most voted class;
    a tie goes to the tied class with the highest mean probability (with `probs` of shape (seeds,
    examples, classes)), else to the lowest index."""
    preds = np.asarray(preds, dtype=np.int64)
    n_classes = int(preds.max()) + 1 if probs is None else probs.shape[-1]
    votes = np.stack([np.sum(preds == k, axis=0) for k in range(n_classes)], axis=-1).astype(float)
    if probs is not None:
        votes += np.asarray(probs, float).mean(axis=0) * 1e-3  # < 1 vote: breaks ties only
    return votes.argmax(axis=-1)


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts[true, predicted]. Counting by hand: a dozen lines, not a dependency (scikit-learn)."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y, np.int64), np.asarray(pred, np.int64)), 1)
    return counts


def per_class(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[tuple[float, float, float, int]]:
    """(precision, recall, F1, support) per class; 0 where undefined."""
    counts = confusion(y, pred, n_classes)
    rows = []
    for k in range(n_classes):
        tp, predicted, support = counts[k, k], counts[:, k].sum(), counts[k].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((float(precision), float(recall), float(f1), int(support)))
    return rows


@dataclass(frozen=True)
class Calibration:
    confidence: np.ndarray  # mean confidence per non-empty bin
    accuracy: np.ndarray  # accuracy per non-empty bin
    count: np.ndarray
    ece: float  # expected calibration error: Σ_bins |acc − conf| × share of examples


def calibration(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> Calibration:
    """Reliability of the top-class probability in equal-width bins (Guo et al., 2017) — the same
    ECE as torchmetrics' MulticlassCalibrationError(norm="l1"), without loading torch for it."""
    probs = np.asarray(probs, float)
    confidence, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == np.asarray(y)).astype(float)
    # Bin i holds (edge_i, edge_i+1]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    keep = count > 0
    mean_conf = np.bincount(which, weights=confidence, minlength=bins)[keep] / count[keep]
    mean_acc = np.bincount(which, weights=correct, minlength=bins)[keep] / count[keep]
    ece = float(np.sum(np.abs(mean_acc - mean_conf) * count[keep]) / max(len(y), 1))
    return Calibration(mean_conf, mean_acc, count[keep], ece)


def _signed(value: float, digits: int) -> str:
    text = f"{value:+.{digits}f}"
    return text.replace("-", "−")


def _digits(diff: Difference) -> int:
    span = max(abs(diff.estimate), abs(diff.low), abs(diff.high)) * diff.scale
    return 1 if span >= 1 or span == 0 else 2 if span >= 0.01 else 4


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def verdict(diff: Difference, a: str = "A", b: str = "B") -> str:
    if diff.within_noise:
        return "within noise"
    better = a if diff.a_better else b
    return f"{better} is better"


def sentence(diff: Difference, a: str, b: str) -> str:
    """'A vs B: +1.2 accuracy points (95% CI −0.8 to +3.1), McNemar p = 0.41 — within noise.'"""
    d = _digits(diff)
    unit = f" {diff.metric} {diff.unit}".rstrip() if diff.unit else f" {diff.metric}"
    ci = f"{_signed(diff.low * diff.scale, d)} to {_signed(diff.high * diff.scale, d)}"
    p = f", {diff.test} p {'' if fmt_p(diff.p_value).startswith('<') else '= '}{fmt_p(diff.p_value)}" \
        if diff.p_value is not None else ""
    return (f"{a} vs {b}: {_signed(diff.estimate * diff.scale, d)}{unit} "
            f"({round(CONFIDENCE * 100)}% CI {ci}){p} — {verdict(diff, a, b)}.")

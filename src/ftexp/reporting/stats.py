"""Statistics of a report's comparisons: pure functions of arrays (no I/O).

- `seed_spread`: a configuration's metric over its seeds — mean ± std and a bootstrap CI of the mean;
- the `compare_*` functions: the difference between two configurations on the same test
  examples. Each side is a set of runs (its seeds, the replicates); the difference is that of the
  mean over each side's runs, with a CI from a two-level bootstrap (test examples resampled, the
  same for both sides, and each side's seeds resampled: reporting/replicates.py). The p-value: one
  run a side, McNemar's exact test on per-example correctness, a sign-flip permutation test of
  per-example differences (errors, losses, graded scores) or a paired permutation test of the
  macro-F1 difference (each example's two predictions swapped at random);
  with seeds, a test that counts them (replicates.seed_p);
- `majority_vote`: one prediction per example from several seeds of a configuration (to list the
  examples configurations disagree on; the tests pair the seeds' own predictions);
- `per_class`, `confusion`, `calibration`: what a classifier gets right, per class and by confidence.

Bootstrap intervals are percentile intervals: they are reproducible by hand from the seed, and
they need no jackknife, whose n evaluations of macro-F1 over n examples would cost O(n²) on a
large test set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ftexp.reporting import replicates
from ftexp.reporting.replicates import ALPHA, CONFIDENCE, RESAMPLES, SEED, as_runs

# Resampled values held at once (resamples × examples per batch) by the permutation tests.
_BATCH_VALUES = 4_000_000
FIXED = (False, False)  # neither side a fixed (deterministic) evaluation


# How a paired difference is tested (the paired tests' and the benchmarks' intros).
PAIRED_TESTS = (
    "p-value: with one run a side, McNemar's exact test on per-example correctness (0/1 scores), a "
    "sign-flip permutation test of the per-example differences (errors, losses, graded scores) or "
    "a paired permutation test (macro-F1) — these know nothing of seed-to-seed variation; with "
    "seeds, the larger p of an exact permutation test over the seeds (runs relabelled between the "
    "two configurations: assumes nothing of how seeds vary, so 2 + 2 seeds can never reach p < "
    "0.05, 4 + 4 can) and a two-level t-test (the seeds' spread plus the examples' variance, "
    "Welch–Satterthwaite df; alone against a base model, which has no seeds). Called better only "
    f"when the CI excludes 0 and p < {ALPHA:.2f}; otherwise within noise.")


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
    test: str  # what gave the p-value ("McNemar", "permutation", "two-level t", …), "" when none
    higher_is_better: bool
    scale: float = 1.0  # shown × scale: 100 for accuracy points
    unit: str = ""
    detail: str = ""  # e.g. the discordant counts; {a} and {b} stand for the two sides' letters
    seeds: tuple[int, int] = (1, 1)  # runs on each side

    def label(self, a: str, b: str, metric: str | None = None) -> str:
        """The metric's name with its detail, the sides called by their letters."""
        name = self.metric if metric is None else metric
        detail = self.detail.replace("{a}", a).replace("{b}", b)
        return f"{name} ({detail})" if detail else name

    @property
    def within_noise(self) -> bool:
        """Noise unless the CI excludes 0 and a test rejects at ALPHA: both must agree before one
        configuration is called better; without a test, no verdict."""
        excludes_zero = self.low > 0 or self.high < 0
        rejects = self.p_value is not None and self.p_value < ALPHA
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


def _macro_f1_from_counts(tp: np.ndarray, true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Macro-F1 from per-class counts (last axis): classes never true nor predicted left out."""
    denom = true + predicted  # 2·tp + fp + fn
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    return f1.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


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
    f1 = _macro_f1_from_counts(np.diagonal(counts, axis1=1, axis2=2), counts.sum(axis=2), counts.sum(axis=1))
    return f1.reshape(lead)


def _classification_metric(y: np.ndarray, n_classes: int) -> replicates.Metric:
    """Accuracy and macro-F1 of each run on each resample (weights: each example's count in it)."""
    classes = np.arange(n_classes)
    true = (y[:, None] == classes).astype(float)  # (examples, classes)

    def metric(pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
        n = weights.shape[1]
        true_counts = weights @ true  # (resamples, classes)
        found = []
        for run in pred:  # per run: (examples, 2 × classes) indicators, one matrix product
            predicted = (run[:, None] == classes).astype(float)
            counts = weights @ np.concatenate([predicted * true, predicted], axis=1)
            tp, predicted_counts = counts[:, :n_classes], counts[:, n_classes:]
            found.append(np.stack([tp.sum(axis=1) / n,
                                   _macro_f1_from_counts(tp, true_counts, predicted_counts)], axis=-1))
        return np.stack(found)
    return metric


def f1_permutation_p(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int,
                     n_resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Two-sided p that two classifiers' macro-F1 differ only by chance: each example's two
    predictions swapped at random (a paired permutation test, Noreen's approximate randomization),
    p = (1 + resamples at least as far from 0) / (1 + resamples). Per-class counts of a resample
    are A's plus the swapped examples' change: one matrix product per batch."""
    if np.array_equal(pred_a, pred_b):
        return 1.0
    classes = np.arange(n_classes)
    true_counts = (np.asarray(y)[:, None] == classes).sum(axis=0).astype(float)

    def indicators(pred: np.ndarray) -> np.ndarray:  # (examples, 2 × classes): tp, predicted
        predicted = (np.asarray(pred)[:, None] == classes).astype(float)
        return np.concatenate([predicted * (np.asarray(y)[:, None] == classes), predicted], axis=1)

    def gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (_macro_f1_from_counts(a[..., :n_classes], true_counts, a[..., n_classes:])
                - _macro_f1_from_counts(b[..., :n_classes], true_counts, b[..., n_classes:]))

    fa, fb = indicators(pred_a), indicators(pred_b)
    sum_a, sum_b, change = fa.sum(axis=0), fb.sum(axis=0), fb - fa
    observed = abs(float(gap(sum_a, sum_b)))
    rng, n = np.random.default_rng(seed), len(fa)
    beyond = 0
    for start in range(0, n_resamples, max(1, _BATCH_VALUES // n)):
        size = min(max(1, _BATCH_VALUES // n), n_resamples - start)
        moved = (rng.random((size, n)) < 0.5).astype(float) @ change
        beyond += int(np.sum(np.abs(gap(sum_a + moved, sum_b - moved)) >= observed - 1e-12))
    return (1 + beyond) / (1 + n_resamples)


def _spread_detail(result: replicates.TwoLevel, index: int, scale: float, unit: str) -> str:
    def sd(runs: np.ndarray) -> str:
        if len(runs) < 2:
            return "–"
        value = float(np.std(runs[:, index], ddof=1)) * scale
        return f"{value:.2g}" if value > 1e-9 * max(scale, 1) else "0"  # rounding, not spread
    return f"seed sd {sd(result.runs_a)} / {sd(result.runs_b)}" + (f" {unit}" if unit else "")


def _difference(result: replicates.TwoLevel, index: int, name: str, p: float | None, test: str,
                higher_is_better: bool, scale: float = 1.0, unit: str = "", detail: str = "") -> Difference:
    return Difference(name, float(result.estimate[index]), float(result.low[index]),
                      float(result.high[index]), p_value=p, test=test, higher_is_better=higher_is_better,
                      scale=scale, unit=unit, detail=detail,
                      seeds=(len(result.runs_a), len(result.runs_b)))


def compare_classification(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int,
                           n_resamples: int = RESAMPLES, seed: int = SEED,
                           fixed: tuple[bool, bool] = FIXED) -> list[Difference]:
    """Accuracy and macro-F1 (points), A − B; labels as class indices, predictions (examples,) for
    one run or (seeds, examples) for several. One run a side: McNemar's exact test (accuracy) and
    a paired permutation test (macro-F1); with seeds, replicates.seed_p."""
    y = np.asarray(y, dtype=np.int64)
    a, b = as_runs(np.asarray(pred_a, dtype=np.int64)), as_runs(np.asarray(pred_b, dtype=np.int64))
    result = replicates.two_level_bootstrap(_classification_metric(y, n_classes), a, b, n_resamples, seed)
    if result.single:
        only_a, only_b, p = mcnemar_exact(a[0] == y, b[0] == y)
        f1_p = f1_permutation_p(y, a[0], b[0], n_classes, n_resamples, seed)
        tests = [(p, "McNemar"), (f1_p, "permutation")]
        details = [f"{only_a} examples only {{a}} gets right, {only_b} only {{b}}", ""]
    else:
        tests = [replicates.seed_p(result, i, fixed, seed) for i in range(2)]
        details = [_spread_detail(result, i, 100, "points") for i in range(2)]
    return [_difference(result, i, name, p, test, True, 100, "points", detail)
            for i, (name, (p, test), detail) in enumerate(zip(("accuracy", "macro-F1"), tests, details,
                                                              strict=True))]


def compare_per_example(name: str, values_a: np.ndarray, values_b: np.ndarray,
                        n_resamples: int = RESAMPLES, seed: int = SEED, higher_is_better: bool = False,
                        binary: bool = False, scale: float = 1.0, unit: str = "",
                        fixed: tuple[bool, bool] = FIXED) -> Difference:
    """A − B of the mean of a per-example quantity: an error or a loss (lower is better, the
    default), or an item score. (examples,) for one run, (seeds, examples) for several. One run a
    side: McNemar's exact test for 0/1 scores (`binary`), else a sign-flip permutation test;
    with seeds, replicates.seed_p."""
    a, b = as_runs(np.asarray(values_a, float)), as_runs(np.asarray(values_b, float))
    result = replicates.two_level_bootstrap(replicates.mean_metric, a, b, n_resamples, seed)
    if result.single and binary:
        only_a, only_b, p = mcnemar_exact(a[0] > 0.5, b[0] > 0.5)
        return _difference(result, 0, name, p, "McNemar", higher_is_better, scale, unit,
                           f"{only_a} item{'s' * (only_a != 1)} only {{a}} gets right, {only_b} only {{b}}")
    if result.single:
        return _difference(result, 0, name, sign_flip_p(a[0] - b[0], n_resamples, seed), "permutation",
                           higher_is_better, scale, unit)
    p, test = replicates.seed_p(result, 0, fixed, seed)
    return _difference(result, 0, name, p, test, higher_is_better, scale, unit,
                       _spread_detail(result, 0, scale, unit))


def compare_regression(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                       n_resamples: int = RESAMPLES, seed: int = SEED) -> list[Difference]:
    """MAE and MSE, A − B (lower is better); predictions (examples,) or (seeds, examples)."""
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

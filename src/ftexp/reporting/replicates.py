"""Statistics of two configurations whose seeds are replicates: each side is a set of runs (its
seeds), every run scored on the same test examples. Pure functions of arrays (no I/O).

- `two_level_bootstrap`: the difference A − B of the mean over each side's runs, with a
  percentile CI from a two-level bootstrap: each resample draws the test examples with
  replacement (the same indices for every run of both sides) and, within each side, its seeds
  with replacement. One seed per side: today's paired example bootstrap, draw for draw (the seed
  draws come from a generator of their own).
- `seed_p`: a p-value that counts the seeds as replicates. Between two trained configurations,
  the larger of two p-values: an exact permutation test over the seeds (every way of relabelling
  the runs between the sides; `seed_permutation_p`), which assumes nothing of how seeds vary, and
  a two-level t-test whose variance adds the spread of the runs' metric over seeds (pooled within
  the configurations) to the examples' (the bootstrap variance with the seeds held fixed), with
  Welch–Satterthwaite degrees of freedom. Against a fixed side (a base model evaluated once, no
  seeds) the t-test alone.

Why both. The permutation test knows the seeds but holds the test set fixed; the t-test adds the
examples' variance, but with few seeds it trusts their spread too much: a run's metric need not
vary smoothly (a run that collapses onto one class is a seed-level accident of two values), and
seeds that happen to agree give a spread of 0. Simulated, the t-test alone called 11–15% of null
comparisons better with 2 seeds a side and 5–7% with 4 when half the seeds collapse; with the
permutation, at most 3.6% (tests/test_report_calibration.py). The price: the permutation's
smallest p is 1/3 with 2 + 2 seeds and 1/10 with 3 + 3, so those can give no verdict
(`seed_note` says so); 4 + 4 (2/70) or 3 + 4 (1/35) can.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
RESAMPLES = 9999
SEED = 0
# Resampled values held at once (resamples × examples × runs of a side per batch).
_BATCH_VALUES = 4_000_000
_MAX_ARRANGEMENTS = 20_000  # beyond: a random sample of the seed permutations
_TIE = 1e-12

# metric(values (runs, examples), weights (resamples, examples)) → (runs, resamples, metrics): each
# run's metrics on each resample of the examples, given as how often it holds each example (a
# bootstrap resample's counts; ones for the test set itself). Counts keep the work to one pass
# over the resamples for all runs (a matrix product) instead of one gather per run.
Metric = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TwoLevel:
    """A − B per metric (the mean over A's runs minus the mean over B's) and what tests need."""
    estimate: np.ndarray  # (metrics,)
    low: np.ndarray  # two-level percentile CI
    high: np.ndarray
    runs_a: np.ndarray  # (A's runs, metrics): each run's metrics on the whole test set
    runs_b: np.ndarray
    example_var: np.ndarray  # (metrics,) variance of the estimate over example resamples, seeds fixed
    n: int  # test examples

    @property
    def single(self) -> bool:
        """One run a side: nothing is known of the seeds."""
        return len(self.runs_a) == 1 and len(self.runs_b) == 1


def as_runs(values: np.ndarray) -> np.ndarray:
    """(runs, examples): one run's 1-D outputs as a single row."""
    values = np.asarray(values)
    return values[None] if values.ndim == 1 else values


def two_level_bootstrap(metric: Metric, a: np.ndarray, b: np.ndarray, n_resamples: int = RESAMPLES,
                        seed: int = SEED, confidence: float = CONFIDENCE) -> TwoLevel:
    """A − B of the mean over each side's runs of `metric`, with its two-level bootstrap CI.
    `a`, `b`: (runs, examples) per-example outputs, examples aligned between all runs."""
    a, b = as_runs(a), as_runs(b)
    n = a.shape[-1]
    whole = np.ones((1, n))
    runs_a, runs_b = metric(a, whole)[:, 0], metric(b, whole)[:, 0]
    estimate = runs_a.mean(axis=0) - runs_b.mean(axis=0)
    examples = np.random.default_rng(seed)
    seeds = np.random.default_rng([seed, 1])
    batch = max(1, _BATCH_VALUES // max(n, 1))
    both, fixed_seeds = [], []
    for start in range(0, n_resamples, batch):
        size = min(batch, n_resamples - start)
        idx = examples.integers(0, n, (size, n))
        counts = np.bincount((idx + n * np.arange(size)[:, None]).ravel(), minlength=size * n)
        weights = counts.reshape(size, n).astype(float)
        ma, mb = metric(a, weights), metric(b, weights)  # (runs, size, metrics)
        fixed_seeds.append(ma.mean(axis=0) - mb.mean(axis=0))
        column = np.arange(size)[None, :]
        pick_a = ma[seeds.integers(0, len(a), (len(a), size)), column].mean(axis=0)
        pick_b = mb[seeds.integers(0, len(b), (len(b), size)), column].mean(axis=0)
        both.append(pick_a - pick_b)
    resampled = np.concatenate(both)
    alpha = 1 - confidence
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2], axis=0)
    example_var = np.concatenate(fixed_seeds).var(axis=0, ddof=1) if n_resamples > 1 else np.zeros_like(
        estimate)
    return TwoLevel(estimate, low, high, runs_a, runs_b, example_var, n)


def _spread(runs: np.ndarray, fixed: bool) -> tuple[float, int]:
    """(sum of squares about the mean, degrees of freedom) of one side's runs."""
    if fixed or len(runs) < 2:
        return 0.0, 0
    return float(np.sum((runs - runs.mean()) ** 2)), len(runs) - 1


def two_level_t_p(estimate: float, runs_a: np.ndarray, runs_b: np.ndarray, example_var: float, n: int,
                  fixed: tuple[bool, bool] = (False, False)) -> float:
    """Two-sided p of a t-test of A − B = 0 whose variance is the seeds' (the runs' spread pooled
    within the sides, over each non-fixed side's seed count) plus the examples'."""
    (ss_a, df_a), (ss_b, df_b) = _spread(runs_a, fixed[0]), _spread(runs_b, fixed[1])
    df_seeds = df_a + df_b
    if df_seeds == 0:
        raise ValueError("no side has two seeds: nothing to estimate the seeds' spread from")
    pooled = (ss_a + ss_b) / df_seeds
    var_seeds = pooled * sum(1 / len(r) for r, f in ((runs_a, fixed[0]), (runs_b, fixed[1])) if not f)
    var = var_seeds + max(float(example_var), 0.0)
    if var <= 0:
        return 1.0 if abs(estimate) <= _TIE else 0.0
    denominator = var_seeds ** 2 / df_seeds + (float(example_var) ** 2 / (n - 1) if n > 1 else 0.0)
    df = var ** 2 / denominator if denominator > 0 else math.inf
    from scipy.stats import t

    return float(min(1.0, 2 * t.sf(abs(estimate) / math.sqrt(var), df)))


def _arrangements(total: int, chosen: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (arrangements, total): which runs go to A, every split or a random sample of them."""
    count = math.comb(total, chosen)
    if count <= _MAX_ARRANGEMENTS:
        rows = np.zeros((count, total), dtype=bool)
        for i, combination in enumerate(itertools.combinations(range(total), chosen)):
            rows[i, list(combination)] = True
        return rows
    order = np.argsort(rng.random((_MAX_ARRANGEMENTS, total)), axis=1)
    rows = np.zeros((_MAX_ARRANGEMENTS, total), dtype=bool)
    np.put_along_axis(rows, order[:, :chosen], True, axis=1)
    rows[0] = np.arange(total) < chosen  # the observed split counts itself
    return rows


def seed_permutation_p(runs_a: np.ndarray, runs_b: np.ndarray, fixed: tuple[bool, bool] = (False, False),
                       seed: int = SEED) -> float:
    """Exact two-sided p that the seeds of both sides come from one configuration: every split of
    the runs into sides of their sizes (a random sample of them when there are very many). Against
    a fixed side (one deterministic evaluation), a sign flip of the other side's per-seed
    differences to it."""
    rng = np.random.default_rng(seed)
    runs_a, runs_b = np.asarray(runs_a, float), np.asarray(runs_b, float)
    if fixed[0] and fixed[1]:
        raise ValueError("both sides are fixed: there are no seeds to permute")
    if fixed[0] or fixed[1]:
        free, level = (runs_b, runs_a.mean()) if fixed[0] else (runs_a, runs_b.mean())
        gaps = free - level
        if len(gaps) <= 14:  # every sign vector
            flips = np.array(list(itertools.product([1.0, -1.0], repeat=len(gaps))))
        else:  # a random sample of them, the observed one first
            flips = np.where(rng.random((_MAX_ARRANGEMENTS, len(gaps))) < 0.5, -1.0, 1.0)
            flips[0] = 1.0
        statistic = np.abs(flips @ gaps) / len(gaps)
        return float(np.mean(statistic >= abs(gaps.mean()) - _TIE))
    pooled = np.concatenate([runs_a, runs_b])
    split = _arrangements(len(pooled), len(runs_a), rng)
    mean_a = split @ pooled / len(runs_a)
    mean_b = (~split) @ pooled / len(runs_b)
    observed = abs(runs_a.mean() - runs_b.mean())
    return float(np.mean(np.abs(mean_a - mean_b) >= observed - _TIE))


def smallest_seed_p(n_a: int, n_b: int, fixed: tuple[bool, bool] = (False, False)) -> float:
    """The smallest p `seed_permutation_p` can give with these seed counts."""
    if fixed[0] or fixed[1]:
        free = n_b if fixed[0] else n_a
        return 2 / 2 ** free
    count = math.comb(n_a + n_b, n_a)
    return min(1.0, (2 if n_a == n_b else 1) / count)


T_TEST, BOTH_TESTS = "two-level t", "seed permutation + two-level t"


def seed_p(result: TwoLevel, index: int, fixed: tuple[bool, bool] = (False, False),
           seed: int = SEED) -> tuple[float, str]:
    """(p, the test's name) of metric `index` with the seeds counted (not for one run a side):
    against a fixed side, the two-level t-test; between two sides with seeds, the larger of the
    two-level t p and the seed permutation p."""
    a, b = result.runs_a[:, index], result.runs_b[:, index]
    p = two_level_t_p(float(result.estimate[index]), a, b, float(result.example_var[index]), result.n,
                      fixed)
    if fixed[0] or fixed[1]:
        return p, T_TEST
    return max(p, seed_permutation_p(a, b, fixed, seed)), BOTH_TESTS


def mean_metric(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The mean of a per-example quantity (an error, a loss, a 0/1 or graded item score)."""
    return (np.asarray(values, float) @ weights.T / weights.shape[1])[..., None]


def seed_note(pair: str, n_a: int, n_b: int, fixed: tuple[bool, bool] = (False, False)) -> str | None:
    """A note when these seed counts cannot give a verdict, whatever the runs score."""
    if fixed[0] or fixed[1] or (n_a == 1 and n_b == 1):
        return None
    smallest = smallest_seed_p(n_a, n_b, fixed)
    if smallest < ALPHA:
        return None
    return (f"{pair}: with {n_a} and {n_b} seeds the seed permutation test cannot go below p = "
            f"{smallest:.2g}, so no difference can be called better; 4 seeds per configuration can.")


SINGLE_RUN_NOTE = ("One run a side ({pairs}): the p-values test the test examples only and know "
                   "nothing of seed-to-seed variation; repeat the runs with seeds (seeds=4) to test "
                   "that too.")

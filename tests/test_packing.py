"""Best-fit-decreasing packing (data/packing.py): fewer rows than filling rows in order, every
sample exactly once, each row within max_length, positions restarting per sample. That a packed
row gives each sample its own loss is tests/test_causal_lm.py's (contamination and validation
loss packed vs not)."""

from __future__ import annotations

import pytest

from ftexp.data.packing import best_fit_decreasing, pack, pad_batch
from ftexp.data.targets import IGNORE


def _samples(lengths: list[int]) -> list[dict[str, list[int]]]:
    # Token ids name the sample and position, so every token can be traced back to its sample.
    return [{"input_ids": [1000 * (s + 1) + t for t in range(n)],
             "labels": [IGNORE] + [1000 * (s + 1) + t for t in range(1, n)]}
            for s, n in enumerate(lengths)]


def _in_order(lengths: list[int], capacity: int) -> int:
    """Rows the previous packing (fill a row in order until the next sample overflows) needs."""
    rows, used = 0, capacity + 1
    for n in lengths:
        if used + n > capacity:
            rows, used = rows + 1, 0
        used += n
    return rows


def _check_rows(samples, rows, max_length):
    seen = []
    for row in rows:
        assert len(row["input_ids"]) <= max_length
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"])
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            ids = row["input_ids"][a:b]
            index = ids[0] // 1000 - 1
            assert ids == samples[index]["input_ids"]  # whole, unmixed, positions 0..n-1
            assert row["position_ids"][a:b] == list(range(b - a))
            assert row["labels"][a] == IGNORE  # never predicted from the previous sample
            assert row["labels"][a + 1:b] == samples[index]["labels"][1:]
            seen.append(index)
    assert sorted(seen) == list(range(len(samples)))  # every sample exactly once


# Sum 20 over rows of 10: two rows are the optimum, {6, 4} and {5, 5}. In-order filling
# ([6], [5, 4], [5]) needs three.
KNOWN = ([6, 5, 4, 5], 10, 2)


def test_best_fit_decreasing_reaches_the_optimum_on_a_known_case():
    lengths, capacity, optimum = KNOWN
    rows = pack(_samples(lengths), capacity)
    assert len(rows) == optimum
    assert _in_order(lengths, capacity) == optimum + 1  # negative control: the old packing
    _check_rows(_samples(lengths), rows, capacity)
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(sorted(lengths[i] for i in b) for b in bins) == [[4, 6], [5, 5]]


def test_best_fit_decreasing_needs_no_more_rows_than_filling_in_order():
    # Alternating long and short samples: in order, each long one closes a row the next short
    # ones cannot join; sorted, the short ones fill the long ones' leftover room.
    lengths = [70, 40, 70, 40, 70, 40, 30, 30, 30, 60, 20, 90, 10, 55, 45, 128, 1, 127]
    capacity = 128
    rows = pack(_samples(lengths), capacity)
    _check_rows(_samples(lengths), rows, capacity)
    lower_bound = -(-sum(lengths) // capacity)
    assert lower_bound <= len(rows) < _in_order(lengths, capacity)
    assert len(rows) == lower_bound  # this set packs perfectly


def test_a_row_keeps_its_samples_in_their_original_order():
    samples = _samples([9, 6, 12])
    (row,) = pack(samples, 64)
    assert row["input_ids"] == sum((s["input_ids"] for s in samples), [])


def test_a_sample_longer_than_a_row_gets_a_row_of_its_own():
    lengths = [5, 20, 5]
    rows = pack(_samples(lengths), 10)
    assert sorted(len(r["input_ids"]) for r in rows) == [10, 20]


@pytest.mark.parametrize("lengths", [[3] * 7, [1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 1] * 5])
def test_padding_a_packed_batch_keeps_counts(lengths):
    samples = _samples(lengths)
    rows = pack(samples, 12)
    batch = pad_batch(rows, 0)
    assert int(batch["row_samples"].sum()) == len(lengths)
    assert int(batch["row_tokens"].sum()) == sum(lengths)

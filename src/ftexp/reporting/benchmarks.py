"""Benchmark scores in a report: what lm-evaluation-harness wrote into each run dir (or the eval
dir of `python -m ftexp.evaluate`, a base model's row of its own), per configuration and paired
between configurations on the same items.

Read per run (ftexp.evaluation.harness writes them):
    eval/results.json   per task: version, num_fewshot, limit, n_samples, output_type, metrics,
                        stderr, higher_is_better (else metrics.json's eval/<task>/<metric> keys)
    eval/<task>.jsonl   one record per item: doc_id and the item's score under each metric

Sections: **Benchmarks**, each configuration's score on each task and metric as mean ± std over
its seeds [bootstrap CI of the mean] with the item count; **Benchmark paired tests**, each pair of
configurations on each task both ran, items matched by doc_id: the difference of the mean item
score (seeds counted as in the paired tests: stats.compare_per_example, McNemar's exact test
for 0/1 scores with one run a side). A pair whose task version, few-shot count or item limit
differ, or that scored different items, is refused with one line in the notes.
"""

from __future__ import annotations

import itertools
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ftexp.reporting import replicates, stats
from ftexp.reporting.collect import Run
from ftexp.reporting.configurations import Configuration
from ftexp.reporting.figures import Cell, Section, Table, difference_cells, fmt
from ftexp.reporting.objectives import eval_results
from ftexp.runs.objective import lower_is_better

EVAL_DIR = "eval"
MAX_PAIRS = 12
_MATCHED = ("version", "num_fewshot", "limit")  # what two runs must share to be compared
_SHOWN = {"version": "task version", "num_fewshot": "num_fewshot", "limit": "limit"}
_AGGREGATE_TOLERANCE = 1e-6


def spread_text(spread: stats.Spread) -> str:
    if spread.n == 0:
        return "–"
    if spread.std is None:
        return fmt(spread.mean)
    return f"{fmt(spread.mean)} ± {fmt(spread.std)} [{fmt(spread.low)}, {fmt(spread.high)}]"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def task_scores(run: Run) -> dict[str, dict[str, Any]]:
    """{task: its entry of eval/results.json}; without that file, the tasks and metrics that
    metrics.json's eval/<task>/<metric> keys name."""
    tasks = eval_results(run.path).get("tasks")
    if isinstance(tasks, dict) and tasks:
        return {str(t): e for t, e in tasks.items() if isinstance(e, dict)}
    found: dict[str, dict[str, Any]] = {}
    for key, value in run.metrics.items():
        if not key.startswith("eval/") or key.count("/") < 2 or _number(value) is None:
            continue
        task, metric = key.removeprefix("eval/").rsplit("/", 1)
        entry = found.setdefault(task, {"metrics": {}, "stderr": {}})
        if metric.endswith("_stderr"):
            entry["stderr"][metric.removesuffix("_stderr")] = value
        else:
            entry["metrics"][metric] = value
    return found


@lru_cache(maxsize=256)
def _items(path: str, task: str, stamp: float) -> dict[int, dict[str, float]] | None:
    """doc_id → {metric: the item's score} of eval/<task>.jsonl (numeric scores only)."""
    file = Path(path) / EVAL_DIR / f"{task}.jsonl"
    try:
        lines = file.read_text(errors="replace").splitlines()
    except OSError:
        return None
    found: dict[int, dict[str, float]] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("doc_id"), int):
            found[record["doc_id"]] = {k: v for k, value in record.items()
                                       if k != "doc_id" and (v := _number(value)) is not None}
    return found


def items(run: Run, task: str) -> dict[int, dict[str, float]] | None:
    file = run.path / EVAL_DIR / f"{task}.jsonl" if run.path is not None else None
    if file is None or not file.is_file():
        return None
    return _items(str(run.path), task, file.stat().st_mtime)


def _runs_by_task(c: Configuration) -> dict[str, list[tuple[Run, dict[str, Any]]]]:
    found: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for run in c.complete:
        for task, entry in task_scores(run).items():
            found.setdefault(task, []).append((run, entry))
    return found


def _higher(entry: dict[str, Any], metric: str) -> bool:
    higher = (entry.get("higher_is_better") or {}).get(metric)
    return higher if isinstance(higher, bool) else not lower_is_better(metric)


def table_section(configurations: list[Configuration],
                  by_task: dict[str, dict[str, list[tuple[Run, dict[str, Any]]]]]) -> Section:
    section = Section("benchmarks", "Benchmarks", intro=(
        "lm-evaluation-harness scores (eval/results.json) per configuration, task and metric: mean ± "
        f"sample std over the seeds [{round(stats.CONFIDENCE * 100)}% percentile-bootstrap CI of the "
        "mean]; one seed (or a base model, evaluated once) shows its value alone, with the harness's "
        "stderr over the items. ↑ / ↓: which way the metric is better."))
    table = Table(["", "configuration", "task", "metric", "score", "seeds", "items", "few-shot",
                   "harness stderr"], [])
    for c in configurations:
        for task, entries in by_task[c.letter].items():
            first = entries[0][1]
            for metric in dict.fromkeys(m for _, e in entries for m in e.get("metrics") or {}):
                values = [v for _, e in entries if (v := _number((e.get("metrics") or {}).get(metric)))
                          is not None]
                errors = [v for _, e in entries if (v := _number((e.get("stderr") or {}).get(metric)))
                          is not None]
                counts = sorted({str(e["n_samples"]) for _, e in entries if e.get("n_samples") is not None})
                arrow = " ↑" if _higher(first, metric) else " ↓"
                table.rows.append([Cell(c.letter), Cell(c.label, "param"), Cell(task, "param"),
                                   Cell(metric + arrow, "param"),
                                   Cell(spread_text(stats.seed_spread(values)), "num"),
                                   Cell(str(len(values)), "num"), Cell(", ".join(counts) or "–", "num"),
                                   Cell(fmt(first.get("num_fewshot")), "num"),
                                   Cell(fmt(float(np.mean(errors))) if errors else "–", "num")])
    section.tables.append(table)
    return section


def _mismatch(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    for key in _MATCHED:
        if a.get(key) != b.get(key):
            return f"{_SHOWN[key]} differs ({fmt(a.get(key))} vs {fmt(b.get(key))})"
    return None


Scored = tuple[Run, dict[str, Any], dict[int, dict[str, float]]]  # a run, its task entry, its items


def _consistent(c: Configuration, task: str, entries: list[tuple[Run, dict[str, Any]]],
                notes: list[str]) -> list[Scored]:
    """The runs of one configuration on `task` that match its first run with per-item scores
    (settings and items), with their items; a note on those left out."""
    kept: list[Scored] = []
    odd = []
    for run, entry in entries:
        scored = items(run, task)
        if scored is None:
            odd.append(f"{run.name} (no eval/{task}.jsonl)")
        elif kept and (_mismatch(kept[0][1], entry) or set(scored) != set(kept[0][2])):
            odd.append(run.name)
        else:
            kept.append((run, entry, scored))
    if odd and kept:
        note = (f"{c.letter} on {task}: {', '.join(odd)} left out of the paired tests (another "
                f"setting, other items or no per-item scores than {kept[0][0].name}).")
        if note not in notes:
            notes.append(note)
    return kept


def _pair(a: Configuration, b: Configuration, task: str, by_task: dict, section: Section) -> None:
    pair = f"{a.letter} vs {b.letter}"
    a_runs, b_runs = (_consistent(c, task, by_task[c.letter][task], section.notes) for c in (a, b))
    missing = [c.letter for c, runs in ((a, a_runs), (b, b_runs)) if not runs]
    if missing:
        section.notes.append(f"{pair} on {task}: not compared, {', '.join(missing)} kept no per-item "
                             f"scores (eval/{task}.jsonl: eval.log_samples=true writes them).")
        return
    a_meta, b_meta = a_runs[0][1], b_runs[0][1]
    a_docs, b_docs = set(a_runs[0][2]), set(b_runs[0][2])
    reason = _mismatch(a_meta, b_meta)
    if reason is None and a_docs != b_docs:
        reason = (f"they scored different items ({len(a_docs)} and {len(b_docs)} doc_ids, "
                  f"{len(a_docs & b_docs)} shared)")
    if reason:
        section.notes.append(f"{pair} on {task}: not compared, {reason}.")
        return
    docs = sorted(a_docs)
    for metric in [m for m in a_meta.get("metrics") or {} if m in (b_meta.get("metrics") or {})]:
        sides = [np.array([[scored[d].get(metric, math.nan) for d in docs] for _, _, scored in runs])
                 for runs in (a_runs, b_runs)]
        if not all(np.all(np.isfinite(s)) for s in sides):
            continue  # no per-item score under this metric (a corpus-level one, say)
        binary = all(np.all((s == 0) | (s == 1)) for s in sides)
        diff = stats.compare_per_example(f"{task}/{metric}", sides[0], sides[1],
                                         higher_is_better=_higher(a_meta, metric), binary=binary,
                                         scale=100 if binary else 1.0, unit="points" if binary else "",
                                         fixed=(a.fixed, b.fixed))
        _aggregate_note(section, task, metric, [*a_runs, *b_runs], np.concatenate(sides))
        section.sentences.append(stats.sentence(diff, a.letter, b.letter))
        name = diff.label(a.letter, b.letter, metric)
        section.tables[0].rows.append([Cell(pair), Cell(task, "param"), Cell(name), *difference_cells(diff),
                                       Cell(str(len(docs)), "num"),
                                       Cell(f"{diff.seeds[0]} / {diff.seeds[1]}", "num"),
                                       Cell(stats.verdict(diff, a.letter, b.letter))])
    note = replicates.seed_note(f"{pair} on {task}", len(a_runs), len(b_runs), (a.fixed, b.fixed))
    if note and note not in section.notes:
        section.notes.append(note)


def _aggregate_note(section: Section, task: str, metric: str, runs: list[Scored], scores: np.ndarray) -> None:
    """Say so when a run's mean item score is not its task score (a metric aggregated otherwise)."""
    reported = [_number((entry.get("metrics") or {}).get(metric)) for _, entry, _ in runs]
    if all(v is None or abs(v - m) <= _AGGREGATE_TOLERANCE for v, m in zip(reported, scores.mean(axis=1),
                                                                          strict=True)):
        return
    note = (f"{task}/{metric}: compared on the mean item score, which is not the harness's score for "
            "this metric (it aggregates the items otherwise).")
    if note not in section.notes:
        section.notes.append(note)


def pairs_section(configurations: list[Configuration], by_task: dict) -> Section:
    section = Section("benchmark-pairs", "Benchmark paired tests", intro=(
        "Each pair of configurations on each benchmark task both ran, on the same items (matched by "
        "task and doc_id): A − B of the mean item score, the mean over A's runs minus the mean over "
        f"B's, with a {round(stats.CONFIDENCE * 100)}% two-level bootstrap CI (items and seeds "
        "resampled). " + stats.PAIRED_TESTS.replace("per-example", "per-item")))
    section.tables.append(Table(["pair", "task", "metric", "A − B", "CI low", "CI high", "p", "test",
                                 "items", "seeds", "verdict"], []))
    pairs = list(itertools.combinations(configurations, 2))
    for a, b in pairs[:MAX_PAIRS]:
        for task in by_task[a.letter]:
            if task in by_task[b.letter]:
                _pair(a, b, task, by_task, section)
    if len(pairs) > MAX_PAIRS:
        section.notes.append(f"The first {MAX_PAIRS} of {len(pairs)} pairs are compared.")
    rows = section.tables[0].rows
    single = list(dict.fromkeys(r[0].text for r in rows if r[9].text == "1 / 1"))
    if single:
        section.notes.append(replicates.SINGLE_RUN_NOTE.format(pairs=", ".join(single)))
    if not rows and not section.notes:
        section.notes.append("No two configurations ran the same benchmark task.")
    return section


def benchmark_sections(configurations: list[Configuration]) -> list[Section]:
    """The benchmark table, and its paired tests with two or more configurations; [] when no run
    has benchmark scores."""
    by_task = {c.letter: _runs_by_task(c) for c in configurations}
    if not any(by_task.values()):
        return []
    found = [table_section(configurations, by_task)]
    if len(configurations) > 1:
        found.append(pairs_section(configurations, by_task))
    return found

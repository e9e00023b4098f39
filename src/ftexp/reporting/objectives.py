"""Objectives of a report: a run's value of a metric, the default objective (the runs'
`task.monitor`), and which way a metric is better — for benchmark scores `eval/<task>/<metric>`
(lm-evaluation-harness, ftexp.evaluation), lm-eval's `higher_is_better` in the run's
`eval/results.json` when no mode is given, else the metric's name (ftexp.runs.objective)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftexp.runs.objective import MAXIMIZE, MINIMIZE, Objective

if TYPE_CHECKING:
    from ftexp.reporting.collect import Run

EVAL_RESULTS = Path("eval") / "results.json"
EVALUATION = "evaluation"  # metrics.json "kind" of an evaluation dir (no training)


def objective_value(metrics: dict[str, Any], metric: str) -> float | None:
    """A run's result on `metric`: its best value over the run where kept, else the final one."""
    value = metrics.get(f"best/{metric}", metrics.get(metric))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def eval_results(path: Path | None) -> dict[str, Any]:
    """A run's eval/results.json (lm-evaluation-harness scores), or {}."""
    file = path / EVAL_RESULTS if path is not None else None
    try:
        found = json.loads(file.read_text()) if file is not None and file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def eval_higher_is_better(metric: str, runs: list[Run]) -> bool | None:
    """Which way a benchmark score `eval/<task>/<metric>` is better, as the runs' results.json
    says (lm-eval's higher_is_better); None for other metrics or when none says."""
    name = metric.removeprefix("best/")
    if not name.startswith("eval/") or name.count("/") < 2:
        return None
    task, score = name.removeprefix("eval/").rsplit("/", 1)
    for run in runs:
        higher = ((eval_results(run.path).get("tasks") or {}).get(task) or {}).get("higher_is_better") or {}
        if isinstance(higher.get(score), bool):
            return higher[score]
    return None


def objective_for(metric: str, runs: list[Run], mode: str | None = None) -> Objective:
    """`metric` in `mode` when given; else a benchmark score's direction from results.json; else
    the metric's own direction (ftexp.runs.objective.lower_is_better)."""
    if not mode:
        higher = eval_higher_is_better(metric, runs)
        if higher is not None:
            return Objective(metric, MAXIMIZE if higher else MINIMIZE)
    return Objective.for_metric(metric, mode)


def default_objectives(runs: list[Run]) -> list[Objective]:
    for run in runs:
        task = run.config.get("task") or {}
        if task.get("monitor"):
            # monitor_mode null or absent (Hydra's own copy of the config): the metric's direction
            return [objective_for(task["monitor"], runs, task.get("monitor_mode"))]
    return [Objective("val/acc", MAXIMIZE)]


def direction_notes(objectives: list[Objective], runs: list[Run]) -> list[str]:
    """Benchmark objectives ranked against the direction lm-eval gives for them."""
    notes = []
    for objective in objectives:
        higher = eval_higher_is_better(objective.metric, runs)
        if higher is not None and higher != (objective.direction == MAXIMIZE):
            mode = "max" if higher else "min"
            notes.append(f"{objective.metric} is ranked to {objective.direction}, but lm-eval says "
                         f"{'higher' if higher else 'lower'} is better (eval/results.json); "
                         f"--objective {objective.metric}:{mode} ranks it that way.")
    return notes

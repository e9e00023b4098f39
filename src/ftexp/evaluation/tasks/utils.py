"""Datasets of the benchmark tasks shipped with ftexp, read from the JSONL files beside this
module (made by scripts/make_eval_demo.py), so the tasks load offline and from any working
directory. lm-evaluation-harness imports this file by path (`!function utils.<name>` in the task
YAMLs); the `lm_eval` command reads the same tasks with `--include_path <this folder>`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"


def _splits(name: str) -> Any:
    import datasets

    rows: dict[str, list[dict[str, Any]]] = {}
    for line in (DATA / f"{name}.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row.pop("split"), []).append(row)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(items) for split, items in rows.items()})


def colours(**_: Any) -> Any:
    """{train, test}: question, choices (4 colours), gold (the true one's index)."""
    return _splits("colours")


def sums(**_: Any) -> Any:
    """{train, test}: question ("3 + 4 ="), answer ("7")."""
    return _splits("sums")

"""Runs grouped into configurations: the seeds of one setting.

A run's configuration is its config's `group` (set by ftexp for every run: equal for runs that
differ only in seed and where they are stored), else, for run dirs made before that key existed,
its resolved config without the keys that say which seed it used, where it is stored and how it
is logged (ftexp.runs.seeds.GROUP_EXCLUDES). Configurations are lettered A, B, C… in the order the
report's paths were given (then by run name), so `ftexp-report A B` reads as "A vs B".

A base-model evaluation (`python -m ftexp.evaluate <hub id or model dir>`: group
`base:<name_or_path>`) is a configuration of its own, labelled as the base model, and `fixed`: it
was not trained, so it has no seeds to vary.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftexp.reporting.collect import BASE_GROUP, Run, replicate_key, settings_of
from ftexp.reporting.examples import CLASSIFICATION, Examples, load_examples

_MAX_NAMED_KEYS = 3


@dataclass
class Configuration:
    letter: str
    group: str  # the runs' `group` ("" for run dirs made before that key)
    runs: list[Run]
    settings: dict[str, Any]  # flattened config without seed, paths, logging
    examples: list[Examples | None] = field(default_factory=list)  # per run
    label: str = ""  # what sets it apart: its group name, or the settings that differ

    @property
    def complete(self) -> list[Run]:
        return [r for r in self.runs if r.state == "complete"]

    @property
    def fixed(self) -> bool:
        """A base model's evaluation: no training, so no seed-to-seed variation."""
        return self.group.startswith(BASE_GROUP)

    def paired_examples(self) -> tuple[list[Examples], list[str]]:
        """The per-example outputs of its complete runs that share the first one's test set, and
        notes on those left out."""
        found = [(r, e) for r, e in zip(self.runs, self.examples, strict=True)
                 if e is not None and r.state == "complete"]
        if not found:
            return [], []
        first = found[0][1]
        same = [e for _, e in found if e.fingerprint == first.fingerprint and e.kind == first.kind]
        odd = [r.name for r, e in found if e.fingerprint != first.fingerprint or e.kind != first.kind]
        notes = [f"{self.letter}: {', '.join(odd)} scored another test set than {found[0][0].name}; "
                 f"left out of the paired tests."] if odd else []
        return same, notes


def _path_rank(run: Run, paths: list[Path]) -> int:
    """The place of the first given path the run lies under."""
    if run.path is None:
        return len(paths)
    where = run.path.resolve()
    for i, path in enumerate(paths):
        try:
            where.relative_to(path.resolve())
            return i
        except ValueError:
            continue
    return len(paths)


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def differing(configurations: list[Configuration]) -> list[str]:
    """Setting keys whose value is not the same in every configuration."""
    keys = list(dict.fromkeys(k for c in configurations for k in c.settings))
    return [k for k in keys
            if len({_show(c.settings.get(k, "–")) for c in configurations}) > 1]


def group_runs(runs: list[Run], paths: list[Path]) -> list[Configuration]:
    """The runs with a run dir, grouped into configurations, lettered in the order of `paths`."""
    by_key: dict[str, tuple[int, list[Run], dict[str, Any]]] = {}
    for index, run in enumerate(r for r in runs if r.path is not None):
        settings = settings_of(run.config)
        key = replicate_key(run)
        rank = (_path_rank(run, paths), index)
        if key not in by_key:
            by_key[key] = (rank, [], settings)  # type: ignore[assignment]
        by_key[key][1].append(run)
    ordered = sorted(by_key.items(), key=lambda item: item[1][0])
    letters = list(string.ascii_uppercase) + [f"{a}{b}" for a in string.ascii_uppercase
                                              for b in string.ascii_uppercase]
    found = []
    for letter, (_, (_, members, settings)) in zip(letters, ordered, strict=False):
        group = members[0].config.get("group")
        found.append(Configuration(letter, group if isinstance(group, str) and group else "", members,
                                   settings, [load_examples(r.path, r.config) for r in members]))
    keys = differing(found)
    for configuration in found:
        named = [f"{k}={_show(configuration.settings.get(k, '–'))}" for k in keys[:_MAX_NAMED_KEYS]]
        described = ", ".join(named) + (", …" if len(keys) > _MAX_NAMED_KEYS else "")
        configuration.label = described or configuration.group or "all runs"
        if configuration.fixed:
            configuration.label = f"base model {configuration.group.removeprefix(BASE_GROUP)}"
    return found


@dataclass
class Pooled:
    """A configuration's per-example outputs over its seeds: classification by majority vote
    (ties to the higher mean probability), regression by the mean prediction, a language model by
    the mean per-example loss."""
    examples: Examples
    seeds: int


def pool(examples: list[Examples]) -> Pooled | None:
    from ftexp.reporting.stats import majority_vote

    if not examples:
        return None
    first = examples[0]
    if len(examples) == 1:
        return Pooled(first, 1)
    if first.kind == CLASSIFICATION:
        probs = np.stack([e.probs for e in examples]) if all(e.probs is not None for e in examples) else None
        pred = majority_vote(np.stack([e.pred for e in examples]), probs)
        mean_probs = probs.mean(axis=0) if probs is not None else None
        pooled = Examples(first.kind, first.fingerprint, first.texts, first.truth, pred, mean_probs,
                          first.classes, source=first.source)
    elif first.losses is not None:
        pooled = Examples(first.kind, first.fingerprint, first.texts, first.truth,
                          losses=np.mean([e.losses for e in examples], axis=0), source=first.source)
    else:
        pooled = Examples(first.kind, first.fingerprint, first.texts, first.truth,
                          np.mean([e.pred for e in examples], axis=0), source=first.source)
    return Pooled(pooled, len(examples))

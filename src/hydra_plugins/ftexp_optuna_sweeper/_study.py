"""What the sweeper and its trials share about a study: how a storage is opened from its
`trial.storage` text, the pruner settings kept in the study, and a trial handle for a run.

Imports optuna, not torch: the sweeper process needs no deep-learning stack until a trial runs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import optuna

from ftexp.runs.errors import ConfigError

PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")
# Study system attribute holding the sweeper's pruner settings: {"name": …, "kwargs": {…}}.
PRUNER_ATTR = "ftexp:pruner"


@functools.lru_cache(maxsize=None)
def open_storage(spec: str) -> Any:
    """The Optuna storage a sweep names: a database URL (anything with '://', e.g.
    sqlite:////abs/optuna.db, postgresql://…) or the path of an Optuna journal file. One object
    per spec and process, shared by the sweeper, its heartbeat thread and in-process trials."""
    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(spec))
    # SQLite: several workers (and a trial next to its sweeper) write to one file; wait for the
    # lock instead of failing after sqlite's default 5 s.
    engine_kwargs = {"connect_args": {"timeout": 120}} if spec.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(spec, engine_kwargs=engine_kwargs)


def make_pruner(name: str, kwargs: Mapping[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """An Optuna pruner by its ftexp name, with Optuna's keyword arguments."""
    settings = dict(kwargs or {})
    classes = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
               "percentile": optuna.pruners.PercentilePruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner}
    if name not in classes:
        raise ConfigError(f"unknown pruner '{name}'; choices: {', '.join(PRUNERS)}.")
    if name == "percentile":
        settings.setdefault("percentile", 25.0)  # prune below the lower quartile
    try:
        return classes[name](**settings)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"pruner={name} with pruner_kwargs {settings}: {err}") from err


def study_id(storage: Any, study: optuna.Study) -> int:
    """The id `storage` (the object the study was opened on) keeps `study` under. Optuna keeps
    `Study._study_id` and `Study._storage` private; the storage's public lookup gives the same id."""
    return storage.get_study_id_from_name(study.study_name)


def trial_id(storage: Any, study: optuna.Study, number: int) -> int:
    """The id `storage` keeps trial `number` of `study` under, for the storage methods that take
    one (trial system attributes have no Trial or Study method). Optuna keeps `Trial._trial_id`
    and `FrozenTrial._trial_id` private; the storage's public lookup gives the same id."""
    return storage.get_trial_id_from_study_id_trial_number(study_id(storage, study), number)


def open_trial(storage: str, study_name: str, number: int) -> optuna.Trial:
    """The running trial numbered `number`, in a study that prunes as its sweeper said."""
    backend = open_storage(storage)
    spec = backend.get_study_system_attrs(backend.get_study_id_from_name(study_name)).get(PRUNER_ATTR)
    spec = spec or {"name": "none"}
    study = optuna.load_study(study_name=study_name, storage=backend,
                              sampler=optuna.samplers.RandomSampler(),
                              pruner=make_pruner(spec["name"], spec.get("kwargs")))
    return optuna.Trial(study, trial_id(backend, study, number))

"""Every schema Hydra composes onto, registered in its ConfigStore in one place: the whole config
as `ftexp_schema` (the first entry of conf/config.yaml's defaults) and each task's schema as
`<task>_schema` in the task group (the first entry of conf/task/<task>.yaml's defaults), from the
task registry. Imported for its effect by whatever composes a config (the CLI, validation)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from ftexp.config.root import FtexpConfig
from ftexp.tasks.registry import TASKS


def schema_name(task: str) -> str:
    """The ConfigStore name of a task's schema: conf/task/<task>.yaml lists it first in its
    defaults, so the task's keys and their defaults exist (typed) when Hydra composes."""
    return f"{task}_schema"


def register_schemas() -> None:
    store = ConfigStore.instance()
    store.store(name="ftexp_schema", node=FtexpConfig)
    for spec in TASKS.values():
        store.store(group="task", name=schema_name(spec.name), node=spec.settings)


register_schemas()

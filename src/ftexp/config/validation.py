"""`validate(cfg)`: a composed config in, the typed config out, or one line saying what is wrong.

Order: unknown keys (did-you-mean), types, the task's own schema (from its registry entry),
missing values, interpolations, allowed values, each group's own `check`, then the rules across
groups (ftexp.config.rules). Nothing heavy is imported: the CLI runs this before a job starts.
"""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

import ftexp.config.store  # noqa: F401  (the schemas Hydra composes onto, registered)
from ftexp.config.adapter import check_adapter
from ftexp.config.root import GROUP_SCHEMAS, FtexpConfig
from ftexp.config.rules import check_combinations
from ftexp.config.upgrade import rename_moved_targets
from ftexp.runs.errors import ConfigError, did_you_mean
from ftexp.runs.objective import monitor_mode
from ftexp.tasks.registry import TaskSpec, get_task, tasks_with_key

# Keys that moved to another group: the error names the new place.
MOVED_KEYS = {"task.learning_rate": "optimizer.learning_rate",
              "task.weight_decay": "optimizer.weight_decay",
              "optimizer.name": "optimizer=<option> (each option is a `_target_` class)",
              "scheduler.name": "scheduler=<option> (each option is a `_target_` function)"}


def _schema_keys(schema: type) -> list[str]:
    return [f.name for f in fields(schema)]


def _walk_unknown_keys(node: Any, schema: type, prefix: str) -> None:
    """Raise on the first key of `node` that `schema` does not declare, with a did-you-mean."""
    if not isinstance(node, DictConfig) or not is_dataclass(schema):
        return
    known = {f.name: f for f in fields(schema)}
    for key in node.keys():
        full = f"{prefix}{key}"
        if full in MOVED_KEYS:
            raise ConfigError(f"unknown config key '{full}': it is now '{MOVED_KEYS[full]}'.")
        if key not in known and getattr(schema, "TAKES_TARGET_ARGUMENTS", False):
            continue  # the target's own argument: checked against its signature at job start
        if key not in known:
            valid = _schema_keys(schema)
            raise ConfigError(
                f"unknown config key '{full}'."
                f"{did_you_mean(str(key), valid, prefix)} "
                f"Valid keys under '{prefix[:-1] or 'the top level'}': {', '.join(valid)}."
            )
        sub = known[key].default_factory() if callable(known[key].default_factory) else None
        if is_dataclass(sub):
            _walk_unknown_keys(node._get_node(key), type(sub), f"{full}.")


def _missing_keys(node: DictConfig, prefix: str) -> list[str]:
    """Keys still set to ??? (like OmegaConf.missing_keys, but without resolving interpolations)."""
    found = []
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            found += _missing_keys(child, f"{prefix}{key}.")
        elif OmegaConf.is_missing(node, key):
            found.append(f"{prefix}{key}")
    return found


def _readable(declared: Any) -> str:
    """A declared type, readable: 'int', 'float or null', …"""
    args = [a for a in typing.get_args(declared) if a is not type(None)]
    if typing.get_origin(declared) is typing.Union and len(args) == 1:
        return f"{getattr(args[0], '__name__', args[0])} or null"
    return getattr(declared, "__name__", str(declared))


def bad_value_message(err: OmegaConfBaseException) -> str:
    """One line for an OmegaConf type error (also raised by Hydra while composing): the key, the
    type its schema declares, and the value given."""
    key = err.full_key or "?"
    owner = getattr(err, "object_type", None)
    hints = typing.get_type_hints(owner) if owner is not None and is_dataclass(owner) else {}
    declared = hints.get(str(getattr(err, "key", "") or key.rsplit(".", 1)[-1]))
    if hasattr(err, "value") and declared is not None:
        return f"bad value for '{key}': expected {_readable(declared)}, got {err.value!r}."
    return f"bad value for '{key}': {str(err.msg).splitlines()[0]}."


def _typed(schema: Any, node: Any) -> DictConfig:
    try:
        return OmegaConf.merge(schema, node)
    except ValidationError as err:
        raise ConfigError(bad_value_message(err)) from err
    except ConfigKeyError as err:  # pragma: no cover - _walk_unknown_keys catches these first
        raise ConfigError(f"unknown config key '{err.full_key}'.") from err


def _typed_task(task: DictConfig) -> tuple[TaskSpec, DictConfig]:
    """The task's registry entry, and the task group merged onto the schema it names."""
    if OmegaConf.is_missing(task, "name") or task.get("name") is None:
        raise ConfigError("missing required value 'task.name': choose a task, e.g. task=classification.")
    spec = get_task(task.name)
    known = _schema_keys(spec.settings)
    for key in task.keys():
        full = f"task.{key}"
        if full in MOVED_KEYS:
            raise ConfigError(f"unknown config key '{full}': it is now '{MOVED_KEYS[full]}'.")
        if key not in known:
            owners = tasks_with_key(str(key))
            if owners:
                raise ConfigError(f"task.{key} is a setting of task={' / '.join(owners)}, not "
                                  f"task={spec.name}; remove the override.")
            raise ConfigError(f"unknown config key '{full}'.{did_you_mean(str(key), known, 'task.')} "
                              f"Valid keys of task={spec.name}: {', '.join(known)}.")
    return spec, _typed(OmegaConf.structured(spec.settings), task)


def _check_choices(node: DictConfig, schema: type, prefix: str) -> None:
    for key, allowed in getattr(schema, "CHOICES", {}).items():
        value = node.get(key)
        if value is not None and str(value) not in allowed:
            raise ConfigError(
                f"'{prefix}{key}={value}' is not a valid choice.{did_you_mean(str(value), allowed)} "
                f"Choices: {', '.join(allowed)}."
            )


def validate(cfg: DictConfig, resolve: bool = True) -> DictConfig:
    """Return `cfg` merged onto the schema (typed, struct), or raise ConfigError with one line.

    `resolve=False` skips interpolations, for checks made before Hydra has set up a run
    (`${hydra:…}` values exist only inside a job).
    """
    user = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    rename_moved_targets(user)
    _walk_unknown_keys(user, FtexpConfig, "")
    schema = OmegaConf.structured(FtexpConfig)
    for group, group_schema in GROUP_SCHEMAS.items():
        if group_schema.TAKES_TARGET_ARGUMENTS:
            OmegaConf.set_struct(schema[group], False)  # declared keys stay typed
    typed = _typed(schema, user)
    spec, task = _typed_task(typed.task)
    OmegaConf.set_struct(typed, False)
    typed.task = task

    missing = _missing_keys(typed, "")
    if missing:
        raise ConfigError(
            f"missing required value '{missing[0]}': set it on the command line, "
            f"e.g. {missing[0]}=<value>."
        )
    try:
        if resolve:
            OmegaConf.resolve(typed)
    except (InterpolationResolutionError, MissingMandatoryValue) as err:
        raise ConfigError(f"cannot resolve '{err.full_key}': {str(err.msg).splitlines()[0]}") from err

    for group, group_schema in GROUP_SCHEMAS.items():
        _check_choices(typed[group], group_schema, f"{group}.")
    _check_choices(typed.task, spec.settings, "task.")
    if typed.task.monitor_mode is None:
        typed.task.monitor_mode = monitor_mode(typed.task.monitor)
    for group, group_schema in GROUP_SCHEMAS.items():
        group_schema.check(typed[group])
    check_adapter(typed.adapter)
    spec.settings.check(typed.task)
    check_combinations(typed)
    OmegaConf.set_struct(typed, True)
    return typed

"""Bring a run's saved config.yaml written by an older ftexp up to the current schema, so
`resume=<run dir>` continues runs started before the schema changed.

Older configs chose the optimizer and scheduler by `name`, switched loggers with flat flags
(`logger.csv: true`, `logger.wandb_mode: …`), kept every task's keys in `task`, and let a
random-init model take its tokenizer from `model.name_or_path`. Each is rewritten to what the
same choice means today, reading the option files in conf/ so no option is listed here.

Code that moved keeps its `_target_` paths working: `MOVED_TARGETS` maps an old dotted prefix to
the new one, for saved configs and for the user's own YAML and overrides alike (validate()
rewrites every `_target_` through `rename_moved_targets`, naming the new path once).
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftexp.runs.paths import config_dir

log = logging.getLogger(__name__)

# Old flat W&B logger keys → the keys of today's `logger.wandb` node.
_WANDB_KEYS = {"wandb_mode": "mode", "wandb_project": "project", "wandb_entity": "entity",
               "wandb_name": "name", "wandb_group": "group", "wandb_tags": "tags"}


# Old dotted prefix → where that code lives now (the layout of ftexp 0.1's first round).
MOVED_TARGETS = {"ftexp.rewards.": "ftexp.tasks.rewards."}


def current_target(path: str) -> str:
    """`path` with a moved prefix replaced by its new home (an unmoved path is returned as is)."""
    for old, new in MOVED_TARGETS.items():
        if path.startswith(old):
            return new + path[len(old):]
    return path


def _moved_targets(node: Any, where: str) -> list[tuple[str, str]]:
    """(dotted key, old path) of each `_target_` naming moved code in a plain container."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    found = []
    for key, value in items:
        place = f"{where}.{key}" if where else str(key)
        if key == "_target_" and isinstance(value, str) and current_target(value) != value:
            found.append((place, value))
        else:
            found.extend(_moved_targets(value, place))
    return found


def rename_moved_targets(cfg: DictConfig) -> None:
    """Rewrite, in place, every `_target_` in `cfg` that names moved code (nothing is resolved)."""
    for place, old in _moved_targets(OmegaConf.to_container(cfg, resolve=False), ""):
        OmegaConf.update(cfg, place, current_target(old), force_add=True)
        log.warning("%s=%s has moved to %s; the old path still works, the run saves the new one",
                    place, old, current_target(old))


def _option(group: str, name: str) -> dict[str, Any]:
    """An option file of conf/<group>/, without its defaults list."""
    node = OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{name}.yaml"))
    node.pop("defaults", None)
    return node


def _by_name(saved: DictConfig, group: str) -> None:
    node = saved.get(group)
    if node is not None and "name" in node and "_target_" not in node:
        target = _option(group, str(node.name))["_target_"]
        OmegaConf.set_struct(node, False)
        node.pop("name")
        node._target_ = target


def _flat_loggers(saved: DictConfig) -> None:
    node = saved.get("logger")
    if node is None or not any(isinstance(node.get(k), bool) for k in ("csv", "wandb")):
        return
    loggers: dict[str, Any] = {}
    if node.get("csv"):
        loggers.update(_option("logger", "csv"))
    if node.get("wandb"):
        wandb = _option("logger", "wandb")["wandb"]
        wandb.update({new: node[old] for old, new in _WANDB_KEYS.items() if old in node})
        loggers["wandb"] = wandb
    saved.logger = loggers


def _task_keys(saved: DictConfig) -> None:
    from ftexp.tasks.registry import get_task

    task = saved.get("task")
    if task is None or "name" not in task:
        return
    known = {f.name for f in fields(get_task(task.name).settings)}
    saved.task = {k: v for k, v in OmegaConf.to_container(task).items() if k in known}


def _random_init_tokenizer(saved: DictConfig) -> None:
    from ftexp.builders.backbone import RANDOM_INIT

    model = saved.get("model")
    if model is not None and model.get("random_init") and model.get("name_or_path") != RANDOM_INIT:
        model.tokenizer = model.get("tokenizer") or model.name_or_path  # where it came from then
        model.name_or_path = RANDOM_INIT


def upgrade_saved_config(saved: DictConfig) -> DictConfig:
    """`saved` rewritten in place to the current schema (a config that is current is unchanged)."""
    before = OmegaConf.to_yaml(saved)
    OmegaConf.set_struct(saved, False)
    for group in ("optimizer", "scheduler"):
        _by_name(saved, group)
    _flat_loggers(saved)
    _task_keys(saved)
    _random_init_tokenizer(saved)
    rename_moved_targets(saved)
    if OmegaConf.to_yaml(saved) != before:
        log.info("resume: the run's config was written by an older ftexp; read as today's schema")
    return saved

"""Bring a run's saved config.yaml written by an older ftexp up to the current schema, so
`resume=<run dir>` continues runs started before the schema changed.

Older configs chose the optimizer and scheduler by `name`, switched loggers with flat flags
(`logger.csv: true`, `logger.wandb_mode: …`), kept every task's keys in `task`, and let a
random-init model take its tokenizer from `model.name_or_path`. Each is rewritten to what the
same choice means today, reading the option files in conf/ so no option is listed here.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftexp.paths import config_dir

log = logging.getLogger(__name__)

# Old flat W&B logger keys → the keys of today's `logger.wandb` node.
_WANDB_KEYS = {"wandb_mode": "mode", "wandb_project": "project", "wandb_entity": "entity",
               "wandb_name": "name", "wandb_group": "group", "wandb_tags": "tags"}


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
    if OmegaConf.to_yaml(saved) != before:
        log.info("resume: the run's config was written by an older ftexp; read as today's schema")
    return saved

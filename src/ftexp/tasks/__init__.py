"""Tasks: what the model is trained to do. One LightningModule per objective; the registry
(ftexp.tasks.registry) maps `task.name` to it and declares what the rest of ftexp asks of it."""

from __future__ import annotations

from typing import Any


def task_class_for(task_settings: dict[str, Any], target: dict[str, Any] | None = None) -> type:
    """The LightningModule class of a saved task group (a checkpoint's `task` hyper-parameters)
    for its target description (see ftexp.data.targets)."""
    from ftexp.tasks.registry import get_task

    return get_task(task_settings["name"]).task_class().for_target(target)

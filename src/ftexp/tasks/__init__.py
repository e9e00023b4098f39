"""Tasks: what the model is trained to do. The data's target kind picks the LightningModule."""

from __future__ import annotations

from typing import Any


def task_class(target: dict[str, Any]) -> type:
    """The LightningModule class for a target description (see ftexp.data.targets)."""
    from ftexp.data.targets import MULTI_LABEL, REGRESSION, SINGLE_LABEL
    from ftexp.tasks.classification import ClassificationTask, MultiLabelClassificationTask
    from ftexp.tasks.regression import RegressionTask

    return {SINGLE_LABEL: ClassificationTask, MULTI_LABEL: MultiLabelClassificationTask,
            REGRESSION: RegressionTask}[target["kind"]]

"""Tasks: what the model is trained to do. The data's target kind picks the LightningModule."""

from __future__ import annotations

from typing import Any


def task_class(target: dict[str, Any] | None) -> type:
    """The LightningModule class for a target description (see ftexp.data.targets); language
    modeling has none."""
    from ftexp.data.targets import MULTI_LABEL, REGRESSION, SINGLE_LABEL
    from ftexp.tasks.causal_lm import CausalLMTask
    from ftexp.tasks.classification import ClassificationTask, MultiLabelClassificationTask
    from ftexp.tasks.regression import RegressionTask

    if target is None:
        return CausalLMTask
    return {SINGLE_LABEL: ClassificationTask, MULTI_LABEL: MultiLabelClassificationTask,
            REGRESSION: RegressionTask}[target["kind"]]

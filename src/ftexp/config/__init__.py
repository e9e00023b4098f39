"""The typed schema of every config group, one module per group: its keys, types, defaults,
allowed values (`CHOICES`) and its own `check`. The YAML options under conf/ hold only what
differs from here.

    base.py              GroupSchema, MISSING, dtype names
    model.py quant.py strategy.py adapter.py optimizer.py scheduler.py generation.py
    data.py trainer.py callbacks.py     one group each
    task.py              keys every task has; head and language-model tasks
    preference_tasks.py  reward, dpo, simpo, orpo, kto; where a reference comes from
    rl_tasks.py          grpo
    root.py              FtexpConfig (the whole config) and GROUP_SCHEMAS
    store.py             the ConfigStore registration (ftexp_schema, <task>_schema)
    validation.py        validate(): unknown keys → types → task schema → … → each group's check
    rules.py             rules across groups (phase 1 from the config, phase 2 with the model type)
    upgrade.py           configs saved by an older ftexp (resume=) and moved `_target_` paths

Open groups (task, adapter, logger, callbacks.extra) are typed later: a task's keys by the schema
its registry entry names (ftexp.tasks.registry), an adapter's by PEFT, a `_target_` node's by its
constructor. The schema modules import neither torch nor transformers, so `--cfg job` and
`--help` stay fast; they may import ftexp.runs.errors and each other, nothing else of ftexp.

This package re-exports the schema classes and tables under their old home, `ftexp.config`, so
existing imports and checkpoints whose pickled hyper-parameters name `ftexp.config.<Class>` load.
"""

from ftexp.config.adapter import (
    ADAPTER_METHODS,
    ADAPTERS,
    NON_PEFT_ADAPTERS,
    PROMPT_LEARNING_ADAPTERS,
    AdapterMethod,
    check_adapter,
)
from ftexp.config.base import DTYPES, MISSING, GroupSchema
from ftexp.config.callbacks import CallbacksConfig
from ftexp.config.data import (
    DEFAULT_ROLES,
    FORMATS,
    PAIRED_FORMATS,
    ROLES,
    UNPAIRED_FORMATS,
    DataConfig,
    PreferenceColumns,
)
from ftexp.config.evaluation import EvalConfig
from ftexp.config.generation import GenerationConfig
from ftexp.config.model import ROPE_SCALING_KEYS, ModelConfig
from ftexp.config.optimizer import (
    LOW_RANK_OPTIMIZER_PACKAGES,
    BlockCoordinate,
    GradientProjection,
    OptimizerConfig,
)
from ftexp.config.preference_tasks import (
    DPO_LOSS_TYPES,
    SMOOTHED_LOSS_TYPES,
    DPOTaskConfig,
    KTOTaskConfig,
    ORPOTaskConfig,
    PreferenceTaskConfig,
    ReferenceTaskConfig,
    RewardTaskConfig,
    SimPOTaskConfig,
    check_beta,
    check_label_smoothing,
    reference_source,
)
from ftexp.config.quant import QuantConfig
from ftexp.config.rl_tasks import GRPO_LOSS_TYPES, SCALE_REWARDS, GRPOTaskConfig
from ftexp.config.root import GROUP_SCHEMAS, FtexpConfig, PathsConfig, TrialConfig
from ftexp.config.scheduler import SchedulerConfig
from ftexp.config.strategy import StrategyConfig
from ftexp.config.task import HeadTaskConfig, LanguageModelTaskConfig, TaskConfig
from ftexp.config.trainer import TrainerConfig

__all__ = [
    "ADAPTERS", "ADAPTER_METHODS", "DEFAULT_ROLES", "DPO_LOSS_TYPES", "DTYPES", "FORMATS", "GROUP_SCHEMAS",
    "GRPO_LOSS_TYPES", "LOW_RANK_OPTIMIZER_PACKAGES", "MISSING", "NON_PEFT_ADAPTERS", "PAIRED_FORMATS",
    "PROMPT_LEARNING_ADAPTERS", "ROLES", "ROPE_SCALING_KEYS", "SCALE_REWARDS", "SMOOTHED_LOSS_TYPES",
    "UNPAIRED_FORMATS", "AdapterMethod", "BlockCoordinate", "CallbacksConfig", "DPOTaskConfig", "DataConfig",
    "EvalConfig", "FtexpConfig", "GRPOTaskConfig", "GenerationConfig", "GradientProjection", "GroupSchema",
    "HeadTaskConfig", "KTOTaskConfig", "LanguageModelTaskConfig", "ModelConfig", "ORPOTaskConfig",
    "OptimizerConfig", "PathsConfig", "PreferenceColumns", "PreferenceTaskConfig", "QuantConfig",
    "ReferenceTaskConfig", "RewardTaskConfig", "SchedulerConfig", "SimPOTaskConfig", "StrategyConfig",
    "TaskConfig", "TrainerConfig", "TrialConfig", "check_adapter", "check_beta", "check_label_smoothing",
    "reference_source",
]

"""The task registry: every option of the `task` group, and what the rest of ftexp needs to know
about it, declared once. Config checks, the training recipe, predict, generate, export and the
report ask an entry here instead of comparing task names.

Kept free of torch imports (config checks read it before a job starts); the LightningModule of
an entry is imported only when `task_class()` is called.

Adding a task: its LightningModule in `tasks/<name>.py` (with a `from_config` classmethod that
builds its DataModule), an entry here (with a schema in its family's module of ftexp.config if it
has keys of its own), and `conf/task/<name>.yaml` whose defaults list starts with `<name>_schema`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields

from ftexp.config.preference_tasks import (
    DPOTaskConfig,
    KTOTaskConfig,
    ORPOTaskConfig,
    RewardTaskConfig,
    SimPOTaskConfig,
)
from ftexp.config.rl_tasks import GRPOTaskConfig, PPOTaskConfig
from ftexp.config.task import DistillTaskConfig, HeadTaskConfig, LanguageModelTaskConfig, TaskConfig
from ftexp.runs.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class TaskSpec:
    name: str
    # "module:Class" of the LightningModule (a subclass of tasks/base.py's FinetuneTask).
    implementation: str
    # Schema of the task.* keys (ftexp.config): their types and defaults.
    settings: type[TaskConfig]
    # Metrics reported per evaluation stage (val/<metric>, test/<metric>).
    metrics: tuple[str, ...]
    # Trained on next-token prediction: the model keeps its LM head, the data are prompts/texts.
    language_model: bool = False
    # What the label column holds: "classes" (one per row, or several: lists or
    # data.label_separator) | "number" | None (language-model tasks read text instead).
    labels: str | None = None
    # Preference data (ftexp.data.preference): "pairs" (prompt, chosen, rejected) or "unpaired"
    # (prompt, completion, desirable); None: the task reads text/label columns.
    preference_data: str | None = None
    # data.packing=true may put several samples in one row.
    packing: bool = False
    # data.cache_encoder_embeddings=true may train the head on stored encoder outputs.
    cached_embeddings: bool = False
    # adapter=frozen still leaves something to train (a head).
    trains_with_frozen_backbone: bool = False
    # Needs prompt/response text: data.prompt_template + response_template, or data.messages_column.
    needs_prompts: bool = False
    # What the run's model serves afterwards: `ftexp.predict` labels or scores rows (and the test
    # split gets a predictions file), `ftexp.generate` writes text, `ftexp.export` writes a
    # transformers model directory.
    predicts: bool = False
    generates: bool = False
    exports: bool = False

    def task_class(self) -> type:
        module, _, name = self.implementation.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def default_monitor(self) -> str:
        return next(f.default for f in fields(self.settings) if f.name == "monitor")

    def monitor_choices(self, stages: tuple[str, ...] = ("val",)) -> list[str]:
        return [f"{stage}/{metric}" for stage in stages for metric in self.metrics]


_HEAD = dict(settings=HeadTaskConfig, cached_embeddings=True, trains_with_frozen_backbone=True,
             predicts=True)
_LM = dict(implementation="ftexp.tasks.causal_lm:CausalLMTask", settings=LanguageModelTaskConfig,
           metrics=("loss", "perplexity"), language_model=True, packing=True, generates=True,
           exports=True)

# What a policy trained on preferences reports (val/…, test/…), as TRL names them.
_PREFERENCE_METRICS = ("loss", "rewards/accuracy", "rewards/margin", "rewards/chosen",
                       "rewards/rejected", "logps/chosen", "logps/rejected")
_POLICY = dict(language_model=True, generates=True, exports=True)
_PAIRS = dict(implementation="ftexp.tasks.preference:PairedPreferenceTask",
              metrics=_PREFERENCE_METRICS, preference_data="pairs", **_POLICY)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    # One class per row, or several when the label column holds lists (multi-label).
    TaskSpec("classification", "ftexp.tasks.classification:ClassificationTask",
             metrics=("acc", "f1_macro", "loss"), labels="classes", **_HEAD),
    # A number per row.
    TaskSpec("regression", "ftexp.tasks.regression:RegressionTask",
             metrics=("mse", "mae", "r2", "loss"), labels="number", **_HEAD),
    # Supervised fine-tuning on prompt → response.
    TaskSpec("causal_lm", needs_prompts=True, **_LM),
    # Next-token prediction on raw text.
    TaskSpec("pretrain", **_LM),
    # A student learns a teacher's next-token distributions on the responses (knowledge distillation).
    TaskSpec("distill", needs_prompts=True, **{**_LM, "implementation": "ftexp.tasks.distill:DistillTask",
                                              "settings": DistillTaskConfig,
                                              "metrics": ("loss", "perplexity", "divergence")}),
    # A scalar score per (prompt, response), trained on preference pairs (Bradley–Terry).
    TaskSpec("reward", "ftexp.tasks.reward:RewardTask", RewardTaskConfig,
             metrics=("accuracy", "margin", "loss"), preference_data="pairs",
             trains_with_frozen_backbone=True, predicts=True, exports=True),
    # The policy learns from preference pairs: DPO and its loss family, SimPO, ORPO.
    TaskSpec("dpo", settings=DPOTaskConfig, **_PAIRS),
    TaskSpec("simpo", settings=SimPOTaskConfig, **_PAIRS),
    TaskSpec("orpo", settings=ORPOTaskConfig, **_PAIRS),
    # … or from unpaired desirable / undesirable examples.
    TaskSpec("kto", "ftexp.tasks.preference:KTOTask", KTOTaskConfig,
             metrics=(*_PREFERENCE_METRICS, "kl"), preference_data="unpaired", **_POLICY),
    # Online RL: the policy learns from rewards on its own samples (GRPO); val/reward is the mean
    # reward of greedy completions (per function: val/rewards/<name>, not listed here).
    TaskSpec("grpo", "ftexp.tasks.grpo:GRPOTask", GRPOTaskConfig,
             metrics=("reward", "completions/mean_length"), **_POLICY),
    # … and with a learned value head (PPO): GAE advantages, clipped policy and value losses.
    TaskSpec("ppo", "ftexp.tasks.ppo:PPOTask", PPOTaskConfig,
             metrics=("reward", "completions/mean_length"), **_POLICY),
)}




def get_task(name: str) -> TaskSpec:
    """The registry entry of `task.name`, or a one-line error naming the choices."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"'task.name={name}' is not a valid choice.{did_you_mean(name, list(TASKS))} "
                          f"Choices: {', '.join(TASKS)}.") from None


def tasks_with_key(key: str) -> list[str]:
    """The tasks whose schema has `key` (for 'that key belongs to another task' messages)."""
    return [n for n, spec in TASKS.items() if key in {f.name for f in fields(spec.settings)}]

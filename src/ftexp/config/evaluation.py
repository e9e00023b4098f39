"""The `eval` group: benchmark evaluation with lm-evaluation-harness after training (and by
`python -m ftexp.evaluate`). `eval=none` (the default) evaluates nothing; `eval=lm_eval` runs
the harness tasks named in `eval.tasks` on the best weights, in process. The checks that need the
harness itself (task names, task YAMLs) run in ftexp.evaluation.harness before any model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig

from ftexp.config.base import GroupSchema, is_number
from ftexp.runs.errors import ConfigError


@dataclass
class EvalConfig(GroupSchema):
    name: str = "none"  # none | lm_eval
    # Harness task (or group) names: lm-eval's own, or those of `include_path` and the tasks
    # shipped with ftexp (src/ftexp/evaluation/tasks/), e.g. [ftexp_colours_mc, hellaswag].
    tasks: list[str] = field(default_factory=list)
    num_fewshot: Optional[int] = None  # null: each task's own default (0 when it has none)
    # Items per task: a count (>= 1) or a fraction of each task (< 1); null: every item.
    limit: Optional[float] = None
    batch_size: Any = 1  # an integer, or auto (the harness finds the largest that fits)
    max_batch_size: int = 64  # the ceiling of batch_size=auto
    # Format prompts with the tokenizer's chat template: auto is on when the run trained on
    # conversations (data.messages_column set).
    apply_chat_template: Any = "auto"
    fewshot_as_multiturn: bool = True  # with the chat template: each few-shot example as a turn
    include_path: Optional[str] = None  # a folder of your own task YAMLs
    # Overrides of the generative tasks' decoding (lm-eval's --gen_kwargs), e.g. {max_gen_toks: 32}.
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    log_samples: bool = True  # per-item records in <run dir>/eval/<task>.jsonl (the report pairs them)
    # Bootstrap resamples for stderrs without a closed form (lm-eval's default); 0: no stderrs.
    bootstrap_iters: int = 100000
    # Evaluate the PEFT model as trained (false) or a copy with the adapter merged in (true:
    # faster per item, the same scores up to rounding).
    merge_adapter: bool = False
    seed: int = 1234  # the harness's seed for few-shot sampling and any sampled decoding

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"name": ("none", "lm_eval")}

    @staticmethod
    def check(node: DictConfig) -> None:
        if node.name == "none":
            return
        if not node.tasks:
            raise ConfigError("eval=lm_eval needs at least one task: eval.tasks=[ftexp_colours_mc] "
                              "(or eval=none).")
        if node.limit is not None and node.limit <= 0:
            raise ConfigError(f"eval.limit={node.limit:g} must be positive: a count of items (>= 1), "
                              "a fraction (< 1), or null for every item.")
        if node.limit is not None and node.limit > 1 and node.limit != int(node.limit):
            raise ConfigError(f"eval.limit={node.limit:g}: a count of items must be whole.")
        if node.num_fewshot is not None and node.num_fewshot < 0:
            raise ConfigError(f"eval.num_fewshot={node.num_fewshot} must be 0 or more (or null).")
        size = node.batch_size
        if not (size == "auto" or (is_number(size, integer=True) and size >= 1)):
            raise ConfigError(f"eval.batch_size={size} must be a positive integer or auto.")
        if node.apply_chat_template not in ("auto", True, False):
            raise ConfigError(f"eval.apply_chat_template={node.apply_chat_template} must be auto, true "
                              "or false.")
        if node.include_path is not None and not Path(node.include_path).is_dir():
            raise ConfigError(f"eval.include_path='{node.include_path}' is not a folder: give the "
                              "folder that holds your task YAMLs.")
        if node.bootstrap_iters < 0:
            raise ConfigError(f"eval.bootstrap_iters={node.bootstrap_iters} must be 0 or more.")

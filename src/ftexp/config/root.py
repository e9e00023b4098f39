"""The whole config: `FtexpConfig` composes the groups' schemas (registered as `ftexp_schema`
by ftexp.config.store), with the top-level keys (seed, seeds, resume, …) and the typed groups
ftexp.config.validation checks one by one (GROUP_SCHEMAS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ftexp.config.base import MISSING
from ftexp.config.callbacks import CallbacksConfig
from ftexp.config.data import DataConfig
from ftexp.config.evaluation import EvalConfig
from ftexp.config.generation import GenerationConfig
from ftexp.config.model import ModelConfig
from ftexp.config.optimizer import OptimizerConfig
from ftexp.config.quant import QuantConfig
from ftexp.config.scheduler import SchedulerConfig
from ftexp.config.strategy import StrategyConfig
from ftexp.config.trainer import TrainerConfig


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING  # content-addressed caches shared by runs (tokenized data, embeddings)


@dataclass
class TrialConfig:
    """Set by the Optuna sweeper for each trial it launches (left empty otherwise), so the run
    knows its trial: it reports `monitor` to the study after every evaluation and stops when the
    pruner says so."""
    study_name: Optional[str] = None
    storage: Optional[str] = None  # Optuna storage URL (sqlite:///…, journal file, …)
    number: Optional[int] = None   # the trial's number in the study
    monitor: Optional[str] = None  # metric reported for pruning (null: no pruning)


@dataclass
class FtexpConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # Open: each method has its own keys (PEFT's), checked against the PEFT config class when
    # the job starts, before any weights load (see builders/adapter.py).
    adapter: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    quant: QuantConfig = field(default_factory=QuantConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    # Open here: typed by the schema the task's registry entry names (see ftexp.config.validation).
    task: Any = field(default_factory=lambda: {"name": "classification"})
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # benchmarks after training (lm-eval)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    # Named `_target_` nodes, one per logger (conf/logger/*.yaml), built by builders/loggers.py.
    logger: dict[str, Any] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    # A run directory to continue from its last checkpoint (`last`: the newest run in outputs/runs).
    resume: Optional[str] = None
    seed: int = 42
    # Run the same configuration under several seeds, one after another, each in its own run dir
    # (<run dir>/seed_<n>): a count (3: seed, seed+1, seed+2) or a list of distinct seeds ([1,2,3]).
    # Typed Any because OmegaConf has no int-or-list type; ftexp.runs.seeds checks it.
    seeds: Any = None
    # What runs that differ only by seed share, for reports and loggers (W&B group, MLflow tag).
    # Null: derived when the run starts from its config without seed and where it is stored
    # (ftexp.runs.seeds.run_group), e.g. classification-tiny_bert-lora-1a2b3c4d.
    group: Optional[str] = None
    # Print full tracebacks instead of one-line errors.
    debug: bool = False


# The typed groups of FtexpConfig, checked group by group by ftexp.config.validation.
GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig, "quant": QuantConfig, "strategy": StrategyConfig,
    "optimizer": OptimizerConfig, "scheduler": SchedulerConfig, "generation": GenerationConfig,
    "eval": EvalConfig, "data": DataConfig, "trainer": TrainerConfig, "callbacks": CallbacksConfig}

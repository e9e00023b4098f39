"""The sweeper's settings (`hydra.sweeper.*`), registered as `hydra/sweeper=ftexp_optuna`.

Kept light (no optuna import): Hydra imports this module whenever it scans for plugins, e.g. for
`--help` and `--cfg job`. No `from __future__ import annotations` here: Hydra's scan runs this
module before registering it in sys.modules, and dataclasses cannot resolve string annotations then.
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class Objective:
    # A key of the run's metrics (what the job returns, = metrics.json): best/val/acc, val/loss,
    # test/acc, peak_memory_gib, trainable_params, fit_seconds, train_seconds_per_epoch, …
    metric: str = MISSING
    direction: str = "maximize"  # maximize | minimize


@dataclass
class FtexpOptunaSweeperConf:
    _target_: str = "hydra_plugins.ftexp_optuna_sweeper.ftexp_optuna_sweeper.FtexpOptunaSweeper"
    # Search space in Hydra's override syntax, {key: choice(…) | range(…) | interval(…) |
    # tag(log, interval(…)) | a fixed value}; sweep overrides on the command line join (and win).
    params: Dict[str, Any] = field(default_factory=dict)
    # What to optimise. Empty: the run's task.monitor in its monitor_mode, read as
    # best/<monitor> (the best evaluation, kept in checkpoints/best.ckpt), else its last value.
    # Several objectives: a multi-objective study (its best trials are the Pareto front).
    objectives: List[Objective] = field(default_factory=list)
    # Trials in the study, in total: a resumed study or several workers stop there together.
    n_trials: int = 20
    # Trials handed to the launcher at once (the basic launcher runs them one after another).
    n_jobs: int = 1
    sampler: str = "tpe"  # tpe | random | cmaes (pip install cmaes) | grid | nsgaii
    seed: Optional[int] = None  # the sampler's seed
    sampler_kwargs: Dict[str, Any] = field(default_factory=dict)  # e.g. {n_startup_trials: 5}
    # none | median | percentile | successive_halving | hyperband; each trial reports `monitor`
    # after every evaluation (step = evaluations so far, i.e. epochs) and stops when pruned.
    pruner: str = "none"
    pruner_kwargs: Dict[str, Any] = field(default_factory=dict)  # e.g. {n_startup_trials: 3}
    # Metric reported for pruning; null: the (single) objective's metric without `best/`.
    monitor: Optional[str] = None
    # Runs per trial, under seeds seed, seed+1, … (in <trial dir>/seed_<n>, one group): the study is
    # told the mean of the objective over them, each seed's values are kept in the trial's user
    # attrs. With a pruner, the first seed alone reports and may be pruned; the other seeds run
    # only for trials whose first seed completed, without reporting.
    repeats: int = 1
    # The study; the default is named after the command (its overrides, params and objectives),
    # so running the same command again resumes the same study.
    study_name: str = "${ftexp_sweep_id:}"
    # Optuna storage: null = SQLite in the sweep dir (<sweep dir>/optuna.db); or any database URL
    # (sqlite:///…, postgresql://…); or a file path without '://' for an Optuna journal file
    # (several workers on a shared file system).
    storage: Optional[str] = None
    # Default of hydra.sweep.dir for these sweeps (conf/config.yaml reads it): one folder per study.
    sweep_dir: str = "outputs/sweeps/${.study_name}"
    # Stop (one line, exit code 2) once more than this share of the finished trials failed
    # (checked from the 3rd finished trial on). Failed trials are recorded FAIL either way.
    max_failure_rate: float = 0.5
    # Seconds between the heartbeats a worker records for its running trials; a running trial
    # whose worker is gone (dead process on this host, or no heartbeat for 4 intervals) is
    # marked failed and its parameters are queued again.
    heartbeat_interval: int = 30


def sweep_id(*, _root_: Any) -> str:
    """`sweep-<hash>` of what defines the search: the task overrides, params, objectives and
    repeats (a mean over seeds is another objective). Other sweeper settings passed as
    hydra.sweeper.* overrides (n_trials, sampler, …) do not count, so raising n_trials resumes
    the same study."""
    hydra = _root_.hydra
    what = {"overrides": sorted(OmegaConf.to_container(hydra.overrides.task, resolve=False)),
            "params": OmegaConf.to_container(hydra.sweeper.params, resolve=False),
            "objectives": OmegaConf.to_container(hydra.sweeper.objectives, resolve=False)}
    repeats = hydra.sweeper.get("repeats", 1)
    if repeats != 1:  # only then: studies of single-seed sweeps keep their names
        what["repeats"] = repeats
    digest = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return f"sweep-{digest[:8]}"


OmegaConf.register_new_resolver("ftexp_sweep_id", sweep_id, replace=True)
ConfigStore.instance().store(group="hydra/sweeper", name="ftexp_optuna", node=FtexpOptunaSweeperConf,
                             provider="ftexp")

"""The sweep loop: ask Optuna for trials, launch them as Hydra jobs, tell Optuna what came back
(the search space is parsed in _search_space.py; storage and pruners are in _study.py; workers,
heartbeats and the trials of a worker that is gone in _workers.py).

The study lives in persistent storage (SQLite in the sweep dir by default), so a sweep is
resumable and shareable: running the same command again continues the study, several workers
on one storage share it, and `n_trials` counts the study's trials in total. Each trial's job gets
its parameters as overrides, plus the `trial` node (study, storage, number, monitor) so the run
can report to the study and be pruned (ftexp/callbacks/optuna_pruning.py), and runs in
`<sweep dir>/trial_<number>`.

With `repeats=k` each trial is k jobs under seeds seed, seed+1, … (`<trial dir>/seed_<n>`), and the
study is told the mean of each objective over them. The first seed runs first and alone reports
for pruning; the other seeds run only for trials whose first seed completed, so a pruned or failed
trial costs one run and every trial's intermediate values are first-seed curves, comparable to
each other.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import statistics
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from ftexp.runs import atomic
from ftexp.runs.errors import ConfigError, FtexpError, reported_as_one_line
from ftexp.runs.objective import DIRECTIONS, MAXIMIZE, Objective, is_pruned, was_pruned

from ._search_space import Param, as_override_text, grid_values, search_space
from ._study import PRUNER_ATTR, make_pruner, open_storage, study_id, trial_id
from ._workers import Heartbeat, claim, excluded, recover, requeue
from .config import sweep_id

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "cmaes", "grid", "nsgaii")
STORAGE_FILE = "optuna.db"  # default storage: <sweep dir>/optuna.db
RESULTS_FILE = "optimization_results.yaml"  # best trial(s), rewritten at the end of each sweep
TRIAL_DIR = "trial_{:04d}"  # each trial's run dir, inside the sweep dir
SEED_DIR = "seed_{}"  # with repeats: each seed's run dir, inside the trial's dir
# Trial user attributes (for people and reports): the run dir; why a trial failed (a trial whose
# worker stopped while it ran: _workers.INTERRUPTED_ATTR).
OUTPUT_DIR_ATTR, ERROR_ATTR = "output_dir", "error"
# With repeats: the trial's seeds, and each seed's objective values ({"<seed>": [values]}).
SEEDS_ATTR, SEED_VALUES_ATTR = "seeds", "seed_values"
# Study user attributes: what defines the study's command (see config.sweep_id), and its overrides.
COMMAND_ATTR, OVERRIDES_ATTR = "command_id", "overrides"
MIN_FINISHED_FOR_FAILURE_RATE = 3


class SweepStopped(FtexpError):
    """The sweep ended early: too many of its trials failed."""


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler calls `study.stop()` once the grid is done, which raises outside
    `study.optimize` (we ask and tell); the sweep loop stops at the grid's size by itself."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        return None


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if isinstance(err, FtexpError) else f"{type(err).__name__}: {text}".rstrip(": ")


def _free_memory() -> None:
    """Between in-process trials: drop the last trial's objects (and CUDA's cached blocks), so
    the next trial's peak memory is its own."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class _Objective(Objective):
    """An objective (ftexp.runs.objective) read from a job's metrics."""
    fallback: str | None = None  # default objective: the plain monitor when best/<monitor> is absent

    def value(self, metrics: Mapping[str, Any]) -> float:
        key = self.metric if self.metric in metrics or self.fallback is None else self.fallback
        if key not in metrics:
            raise KeyError(f"metric '{self.metric}' is not in the run's metrics "
                           f"(it has: {', '.join(sorted(metrics))})")
        return float(metrics[key])


class FtexpOptunaSweeperImpl:
    def __init__(self, params: Mapping[str, Any] | None = None, objectives: Sequence[Any] = (),
                 n_trials: int = 20, n_jobs: int = 1, sampler: str = "tpe", seed: int | None = None,
                 sampler_kwargs: Mapping[str, Any] | None = None, pruner: str = "none",
                 pruner_kwargs: Mapping[str, Any] | None = None, monitor: str | None = None,
                 study_name: str = "", storage: str | None = None, sweep_dir: str = "",
                 max_failure_rate: float = 0.5, heartbeat_interval: int = 30, repeats: int = 1) -> None:
        def plain(value: Any) -> Any:
            return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

        self.params = plain(params)
        self.objective_settings = [dict(plain(o)) for o in objectives or []]
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_name, self.seed, self.sampler_kwargs = sampler, seed, dict(plain(sampler_kwargs) or {})
        self.pruner_name, self.pruner_kwargs = pruner, dict(plain(pruner_kwargs) or {})
        self.monitor_setting = monitor
        self.study_name, self.storage_setting = study_name, storage
        # `sweep_dir` only feeds hydra.sweep.dir's default (conf/config.yaml); setup() reads that.
        self.max_failure_rate, self.heartbeat_interval = max_failure_rate, heartbeat_interval
        self.repeats = repeats
        self.seeds: list[int] = []  # with repeats: each trial's seeds, set when the sweep starts
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.sweep_dir = Path(".")
        self.monitor: str | None = None  # set when the sweep starts
        self.storage_spec = ""
        self.storage: Any = None
        self.lock_path: Path | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()

    # -- settings -------------------------------------------------------------------------------

    def _objectives(self) -> list[_Objective]:
        if not self.objective_settings:
            # The composed config holds only what the task's YAML and the command line set; the
            # rest are the task's schema defaults (its registry entry), as the job will see them.
            from ftexp.tasks.registry import get_task

            task = self.config.task
            monitor = task.get("monitor") or get_task(task.name).default_monitor
            try:  # monitor_mode null (or absent): the metric's own direction
                objective = Objective.for_metric(monitor, task.get("monitor_mode"))
            except ValueError as err:
                raise ConfigError(f"task.monitor_mode={task.get('monitor_mode')}: {err}.") from err
            return [_Objective(f"best/{monitor}", objective.direction, fallback=monitor)]
        found = []
        for setting in self.objective_settings:
            direction = str(setting.get("direction", MAXIMIZE))
            if direction not in DIRECTIONS:
                raise ConfigError(f"objective '{setting.get('metric')}': direction '{direction}' is not "
                                  f"one of {', '.join(DIRECTIONS)}.")
            self._check_benchmark_objective(str(setting["metric"]))
            found.append(_Objective(str(setting["metric"]), direction))
        return found

    def _check_benchmark_objective(self, metric: str) -> None:
        """A benchmark objective `eval/<task>/<metric>` exists only if the trials evaluate that task."""
        if not metric.startswith("eval/"):
            return
        ev = self.config.get("eval") or {}
        task = metric.split("/")[1] if metric.count("/") >= 2 else ""
        if ev.get("name", "none") == "none":
            raise ConfigError(f"objective '{metric}' is a benchmark score, and the trials evaluate none: "
                              f"add eval=lm_eval eval.tasks=[{task or '<task>'}] to the sweep.")
        if task not in [str(t) for t in ev.get("tasks") or []]:
            raise ConfigError(f"objective '{metric}': task '{task}' is not in eval.tasks "
                              f"({', '.join(map(str, ev.get('tasks') or []))}); add it there.")

    def _seeds(self, space: Mapping[str, Param]) -> list[int]:
        """Each trial's seeds: [] for one run per trial (the configured seed), else seed, seed+1, …"""
        if self.config.get("seeds") is not None:  # the job would refuse it in every trial
            raise ConfigError("seeds= does not run inside a sweep: use hydra.sweeper.repeats=k, which runs "
                              "each trial under k seeds and tells the study their mean.")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"hydra.sweeper.repeats={self.repeats}: each trial needs at least one run; "
                              "repeats=k runs it under k seeds (seed, seed+1, …).")
        if self.repeats == 1:
            return []
        if "seed" in space:
            raise ConfigError(f"hydra.sweeper.repeats={self.repeats} gives each trial seeds seed, seed+1, …: "
                              "drop seed from the search space (set seed=<first seed> instead).")
        base = int(self.config.seed)
        return [base + i for i in range(self.repeats)]

    def _monitor(self, objectives: list[_Objective]) -> str | None:
        if self.pruner_name == "none":
            return None
        if len(objectives) > 1:
            raise ConfigError(f"pruner={self.pruner_name} needs a single objective (Optuna cannot prune "
                              "multi-objective studies); set hydra.sweeper.pruner=none.")
        monitor = self.monitor_setting or objectives[0].metric.removeprefix("best/")
        if not monitor.startswith(("val/", "train/", "train_eval/")):
            raise ConfigError(f"pruning reports a metric at every evaluation, and '{monitor}' is not "
                              "one; set hydra.sweeper.monitor=val/… (same direction as the objective).")
        return monitor

    def _storage_spec(self) -> str:
        spec = self.storage_setting or f"sqlite:///{self.sweep_dir / STORAGE_FILE}"
        if spec.startswith("sqlite:///") and not spec.startswith("sqlite:////") and spec != "sqlite:///:memory:":
            spec = f"sqlite:///{Path(spec[len('sqlite:///'):]).absolute()}"  # trials may run elsewhere
        elif "://" not in spec:
            spec = str(Path(spec).absolute())  # an Optuna journal file
        return spec

    def _lock_path(self, spec: str) -> Path | None:
        """A lock file beside a file storage: workers count trials and ask for new ones one at a
        time, so together they start exactly n_trials. (Database servers: no lock.)"""
        if spec.startswith("sqlite:///") and ":memory:" not in spec:
            return Path(spec[len("sqlite:///"):] + ".ftexp-lock")
        return Path(spec + ".ftexp-lock") if "://" not in spec else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # Windows: no lock (one worker per storage)
            fcntl = None
        if self.lock_path is None or fcntl is None:
            yield
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _sampler(self, space: Mapping[str, Param]) -> Any:
        if self.sampler_name not in SAMPLERS:
            raise ConfigError(f"unknown sampler '{self.sampler_name}'; choices: {', '.join(SAMPLERS)}.")
        kwargs = dict(self.sampler_kwargs)
        if self.seed is not None:
            kwargs.setdefault("seed", self.seed)
        samplers = optuna.samplers
        if self.sampler_name == "cmaes":
            import importlib.util

            if importlib.util.find_spec("cmaes") is None:
                raise ConfigError("sampler=cmaes needs the cmaes package: pip install cmaes")
        try:
            if self.sampler_name == "grid":
                return _GridSampler(grid_values(space), **kwargs)
            chosen = {"tpe": samplers.TPESampler, "random": samplers.RandomSampler,
                      "cmaes": samplers.CmaEsSampler, "nsgaii": samplers.NSGAIISampler}[self.sampler_name]
            return chosen(**kwargs)
        except TypeError as err:
            raise ConfigError(f"sampler={self.sampler_name} with sampler_kwargs {kwargs}: {err}") from err

    # -- the sweep ------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        assert self.config is not None
        with reported_as_one_line(bool(self.config.get("debug", False))):
            return self._sweep(arguments)

    def _sweep(self, arguments: list[str]) -> list[JobReturn]:
        if self.n_trials < 1 or self.n_jobs < 1 or not 0 <= self.max_failure_rate <= 1:
            raise ConfigError("hydra.sweeper: n_trials and n_jobs must be at least 1, max_failure_rate "
                              "within [0, 1].")
        space, fixed = search_space(arguments, self.params)
        self.seeds = self._seeds(space)
        objectives = self._objectives()
        self.monitor = self._monitor(objectives)
        pruner = make_pruner(self.pruner_name, self.pruner_kwargs)
        sampler = self._sampler(space)
        n_trials = self.n_trials
        if self.sampler_name == "grid":
            size = math.prod(len(v) for v in grid_values(space).values())
            if size < n_trials:
                log.info("sampler=grid: the grid has %d points, so the study stops at %d trials", size, size)
            n_trials = min(n_trials, size)
        self.storage_spec = self._storage_spec()
        self.lock_path = self._lock_path(self.storage_spec)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(self.sweep_dir / "multirun.yaml") as tmp:
            OmegaConf.save(self.config, tmp)
        directions = [o.direction for o in objectives]
        with self._locked(), warnings.catch_warnings():  # locked: a new SQLite file gets its tables once
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.storage = open_storage(self.storage_spec)
            study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=sampler,
                                        pruner=pruner, directions=directions, load_if_exists=True)
            stored = [d.name.lower() for d in study.directions]
            if stored != directions:
                raise ConfigError(f"study '{self.study_name}' in {self.storage_spec} optimises {stored}, not "
                                  f"{directions}; choose another hydra.sweeper.study_name or sweep dir.")
            self._check_command(study, arguments)
            study.set_metric_names([o.metric for o in objectives])
            self.storage.set_study_system_attr(study_id(self.storage, study), PRUNER_ATTR,
                                               {"name": self.pruner_name, "kwargs": self.pruner_kwargs})
            study.set_user_attr("objectives", [{"metric": o.metric, "direction": o.direction}
                                               for o in objectives])
            study.set_user_attr("sweep_dir", str(self.sweep_dir))
            study.set_user_attr("monitor", self.monitor)
        done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not excluded(t)]
        log.info("study '%s' (%s) in %s: %d of %d trials done%s; the same command resumes it",
                 self.study_name, self.storage_spec, self.sweep_dir, len(done), n_trials,
                 _state_counts(done))
        returns: list[JobReturn] = []
        while True:
            with self._locked():
                recover(self.storage, study, self.heartbeat_interval)
                counted = [t for t in study.get_trials(deepcopy=False) if not excluded(t)]
                waiting = sum(t.state == TrialState.WAITING for t in counted)
                room = n_trials - len(counted) + waiting
                if room <= 0:
                    break
                batch = [self._ask(study, space) for _ in range(min(self.n_jobs, room))]
            returns += self._run(study, batch, fixed, space, objectives)
            self._check_failures(study)
        self._summarise(study, objectives, n_trials)
        return returns

    def _check_command(self, study: optuna.Study, arguments: list[str]) -> None:
        """One study, one command: a study named in a sweep file (or by hand) is resumed only by
        the command that started it (sweeper settings such as n_trials may change), so trials of
        different setups never mix."""
        command = sweep_id(_root_=self.config)
        started_by = study.user_attrs.get(COMMAND_ATTR)
        if started_by is None:
            study.set_user_attr(COMMAND_ATTR, command)
            study.set_user_attr(OVERRIDES_ATTR, sorted(arguments))
        elif started_by != command:
            before = " ".join(study.user_attrs.get(OVERRIDES_ATTR, [])) or "none"
            raise ConfigError(
                f"study '{self.study_name}' ({self.sweep_dir}) was started by another command (overrides: "
                f"{before}; or other params/objectives); run that to resume it, or give this one its own "
                f"study: hydra.sweeper.study_name=<name> hydra.sweep.dir=outputs/sweeps/<name>.")

    def _ask(self, study: optuna.Study, space: Mapping[str, Param]) -> optuna.Trial:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. a float range's high adjusted to its step
            trial = study.ask({name: p.distribution for name, p in space.items()})
        id_ = trial_id(self.storage, study, trial.number)
        claim(self.storage, id_)
        trial.set_user_attr(OUTPUT_DIR_ATTR, str(self.sweep_dir / TRIAL_DIR.format(trial.number)))
        return trial

    def _job_overrides(self, trial: optuna.Trial, fixed: list[str], space: Mapping[str, Param],
                       repeat: int = 0) -> list[str]:
        """The job of one trial (with repeats: of its `repeat`-th seed, which alone reports for
        pruning if it is the first)."""
        swept = [space[name].override(trial.params[name]) for name in space]
        where, seed = TRIAL_DIR.format(trial.number), []
        if self.seeds:
            where, seed = f"{where}/{SEED_DIR.format(self.seeds[repeat])}", [f"seed={self.seeds[repeat]}"]
        monitor = self.monitor if repeat == 0 else None
        return [*fixed, *swept, *seed,
                f"trial.study_name={as_override_text(self.study_name)}",
                f"trial.storage={as_override_text(self.storage_spec)}",
                f"trial.number={trial.number}", f"trial.monitor={as_override_text(monitor)}",
                f"hydra.sweep.dir={as_override_text(str(self.sweep_dir))}",
                f"hydra.sweep.subdir={as_override_text(where)}"]

    def _run(self, study: optuna.Study, batch: list[optuna.Trial], fixed: list[str],
             space: Mapping[str, Param], objectives: list[_Objective]) -> list[JobReturn]:
        """Launch a batch of trials (with repeats: their first seeds, then the other seeds of those
        that completed) and tell the study; the job returns, in launch order."""
        ids = [trial_id(self.storage, study, t.number) for t in batch]
        try:
            with Heartbeat(self.storage, ids, self.heartbeat_interval):
                first = self.launcher.launch([self._job_overrides(t, fixed, space) for t in batch],
                                             initial_job_idx=batch[0].number)
                runs = [[ret] for ret in first]
                going_on = [i for i, ret in enumerate(first)
                            if self.seeds and self._outcome(ret, objectives)[0] == TrialState.COMPLETE]
                if going_on:
                    _free_memory()
                    rest = iter(self.launcher.launch(
                        [self._job_overrides(batch[i], fixed, space, r)
                         for i in going_on for r in range(1, len(self.seeds))],
                        initial_job_idx=batch[0].number))
                    for i in going_on:
                        runs[i] += [next(rest) for _ in range(1, len(self.seeds))]
        except BaseException:  # Ctrl-C, or a job that exits the process: run these again later
            for id_ in ids:
                requeue(self.storage, study, self.storage.get_trial(id_), "the sweep was interrupted")
            raise
        finally:
            _free_memory()
        for trial, rets in zip(batch, runs, strict=True):
            self._tell(study, trial, rets, objectives)
        return [ret for rets in runs for ret in rets]

    @staticmethod
    def _outcome(ret: JobReturn, objectives: list[_Objective]) -> tuple[TrialState, Any]:
        """What one job says about its trial: (COMPLETE, objective values), (PRUNED, the step or
        None) or (FAIL, why)."""
        if ret.status != JobStatus.COMPLETED:
            err = ret._return_value
            if isinstance(err, BaseException) and is_pruned(err):
                return TrialState.PRUNED, None
            return TrialState.FAIL, _one_line(err) if isinstance(err, BaseException) else "the job failed"
        metrics = ret.return_value
        if not isinstance(metrics, Mapping):
            return TrialState.FAIL, "the job returned no metrics"
        if was_pruned(metrics):
            return TrialState.PRUNED, metrics.get("pruned_at_step")
        try:
            values = [o.value(metrics) for o in objectives]
        except (KeyError, TypeError, ValueError) as err:
            return TrialState.FAIL, str(err).strip("'\"")
        if not all(math.isfinite(v) for v in values):
            return TrialState.FAIL, f"objective values are not finite: {values}"
        return TrialState.COMPLETE, values

    def _tell(self, study: optuna.Study, trial: optuna.Trial, rets: list[JobReturn],
              objectives: list[_Objective]) -> None:
        """Tell the study how the trial's run(s) ended: pruned or failed as its first run (or a
        failed later seed) says, else the mean of its runs' objective values."""
        where = TRIAL_DIR.format(trial.number)
        outcomes = [self._outcome(ret, objectives) for ret in rets]
        state, detail = outcomes[0]
        if state == TrialState.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d PRUNED%s (%s)", trial.number, f" at step {detail}" if detail else "", where)
            return
        if self.seeds:
            trial.set_user_attr(SEEDS_ATTR, self.seeds)
            # Fewer runs than seeds when the first failed: the later seeds did not run.
            trial.set_user_attr(SEED_VALUES_ATTR, {str(seed): values for seed, (s, values)
                                                   in zip(self.seeds, outcomes, strict=False)
                                                   if s == TrialState.COMPLETE})
        for i, (state, detail) in enumerate(outcomes):
            if state != TrialState.COMPLETE:
                reason = detail if state == TrialState.FAIL else "pruned"
                self._fail(study, trial, f"seed {self.seeds[i]}: {reason}" if self.seeds else reason)
                return
        # The mean over seeds: what a setting does on average, not on its luckiest seed.
        values = [statistics.fmean(column) for column in zip(*(v for _, v in outcomes), strict=True)]
        study.tell(trial, values)
        log.info("trial %d COMPLETE %s%s (%s)", trial.number, _shown(objectives, values),
                 f" (mean of seeds {self.seeds})" if self.seeds else "", where)

    def _fail(self, study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr(ERROR_ATTR, reason)
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d FAIL: %s (%s)", trial.number, reason, TRIAL_DIR.format(trial.number))

    def _check_failures(self, study: optuna.Study) -> None:
        finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not excluded(t)]
        failed = [t for t in finished if t.state == TrialState.FAIL]
        if len(finished) < MIN_FINISHED_FOR_FAILURE_RATE:
            return
        if len(failed) <= self.max_failure_rate * len(finished):
            return
        last = failed[-1]
        raise SweepStopped(
            f"sweep stopped: {len(failed)} of {len(finished)} finished trials failed, more than "
            f"hydra.sweeper.max_failure_rate={self.max_failure_rate:g}; last, trial {last.number}: "
            f"{last.user_attrs.get(ERROR_ATTR, '?')}")

    def _summarise(self, study: optuna.Study, objectives: list[_Objective], n_trials: int) -> None:
        counted = [t for t in study.get_trials(deepcopy=False) if not excluded(t)]
        complete = [t for t in counted if t.state == TrialState.COMPLETE]
        if len(objectives) == 1:
            sign = objectives[0].sign
            best = [max(complete, key=lambda t: sign * t.value)] if complete else []
        else:
            best = study.best_trials if complete else []
        metrics = [o.metric for o in objectives]
        results = {"study_name": self.study_name, "storage": self.storage_spec, "n_trials": n_trials,
                   "states": dict(Counter(t.state.name for t in counted)),
                   "objectives": {o.metric: o.direction for o in objectives},
                   "best_trials": [{"number": t.number,
                                    "values": dict(zip(metrics, t.values, strict=True)),
                                    "params": t.params, OUTPUT_DIR_ATTR: t.user_attrs.get(OUTPUT_DIR_ATTR)}
                                   for t in best]}
        with atomic.atomic_path(self.sweep_dir / RESULTS_FILE) as tmp:
            OmegaConf.save(OmegaConf.create(results), tmp)
        log.info("study '%s': %d trials%s", self.study_name, len(counted), _state_counts(counted))
        for trial in best:
            log.info("best: trial %d %s %s (%s)", trial.number, _shown(objectives, trial.values),
                     trial.params, trial.user_attrs.get(OUTPUT_DIR_ATTR))


def _shown(objectives: Sequence[_Objective], values: Sequence[float]) -> str:
    return ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(objectives, values, strict=True))


def _state_counts(trials: Sequence[FrozenTrial]) -> str:
    counts = Counter(t.state.name for t in trials)
    return f" ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})" if counts else ""

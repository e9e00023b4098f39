"""Our Optuna sweeper (hydra/sweeper=ftexp_optuna): search space, pruning, failures, resume after a
kill, several workers on one storage, the sweeps/ campaigns, and plugin discovery.

Sweeps run as real `python -m ftexp -m …` processes on the tiny BERT (one torch thread each, so
two processes share the two cores without oversubscribing)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import margins_seed, sentiment_rows
from ftexp.config.validation import validate
from ftexp.runs.errors import ConfigError
from ftexp.runs.paths import config_dir, project_root
from hydra_plugins.ftexp_optuna_sweeper._impl import FtexpOptunaSweeperImpl
from hydra_plugins.ftexp_optuna_sweeper._search_space import as_override_text, grid_values, search_space
from hydra_plugins.ftexp_optuna_sweeper._study import open_storage
from hydra_plugins.ftexp_optuna_sweeper._workers import (
    HEARTBEAT_ATTR,
    HOST_ATTR,
    INTERRUPTED_ATTR,
    PID_ATTR,
    RETRY_ATTR,
    recover,
)
from hydra_plugins.ftexp_optuna_sweeper.config import sweep_id

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
SWEEPS = sorted(p.stem for p in (project_root() / "sweeps").glob("*.yaml"))


@pytest.fixture(scope="module")
def split_csv(tmp_path_factory) -> Path:
    """Toy sentiment data with a fixed split: 220 train, 64 validation rows, no test rows (each
    trial skips the test pass)."""
    path = tmp_path_factory.mktemp("sweep-data") / "toy.csv"
    frame = sentiment_rows(284, seed=1)
    frame["split"] = ["train"] * 220 + ["validation"] * 64
    frame.to_csv(path, index=False)
    return path


def sweep_command(data: Path, sweep_dir: Path, *extra: str) -> list[str]:
    """A sweep of 3-epoch tiny-BERT trials (6 training batches per epoch, ~2 s each)."""
    return [sys.executable, "-m", "ftexp", "-m", "hydra/sweeper=ftexp_optuna", "model=tiny_bert",
            "data=custom", f"data.path={data}", "data.split_column=split", "data.max_length=16",
            "data.batch_size=16", "scheduler=constant", "trainer.accelerator=cpu", "trainer.precision=32",
            "trainer.max_epochs=3", "trainer.limit_train_batches=6", "trainer.enable_progress_bar=false",
            "logger=none", "callbacks.checkpoint=false", f"hydra.sweep.dir={sweep_dir}", *extra,
            *margins_seed(list(extra))]


def run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)


def load_study(sweep_dir: Path) -> optuna.Study:
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def counted(study: optuna.Study) -> list:
    """The study's own trials: without those a stopped worker left behind (run again later)."""
    return [t for t in study.trials if not t.user_attrs.get(INTERRUPTED_ATTR)]


def trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.glob("trial_*") if p.is_dir())


# -- search space (no training) -----------------------------------------------------------------


def test_override_syntax_becomes_optuna_distributions():
    space, fixed = search_space(
        ["adapter=lora", "adapter.r=choice(4,8,16)", "seed=range(1,10,2)", "x=interval(0.1,0.5)",
         "optimizer.learning_rate=tag(log, interval(1e-5, 1e-2))", "+y=tag(int, interval(1, 5))",
         "adapter.target_modules=choice([query,value],all-linear)"],
        {"adapter.lora_alpha": "choice(8, 16)", "adapter.r": "choice(1, 2)", "trainer.max_epochs": 2})
    assert fixed == ["adapter=lora", "trainer.max_epochs=2"]
    assert space["adapter.r"].distribution == CategoricalDistribution([4, 8, 16])  # command line wins
    assert space["adapter.lora_alpha"].distribution == CategoricalDistribution([8, 16])
    assert space["seed"].distribution == IntDistribution(1, 9, step=2)  # range's stop is exclusive
    assert space["x"].distribution == FloatDistribution(0.1, 0.5)
    assert space["optimizer.learning_rate"].distribution == FloatDistribution(1e-5, 1e-2, log=True)
    assert space["y"].distribution == IntDistribution(1, 5) and space["y"].key == "+y"
    assert space["y"].override(3) == "+y=3"
    modules = space["adapter.target_modules"]
    assert [modules.override(v) for v in modules.distribution.choices] == [
        "adapter.target_modules=[query,value]", "adapter.target_modules=all-linear"]
    with pytest.raises(Exception, match="interval"):
        grid_values(space)
    assert grid_values({k: space[k] for k in ("adapter.r", "seed")}) == {"adapter.r": [4, 8, 16],
                                                                          "seed": [1, 3, 5, 7, 9]}


@pytest.mark.parametrize("value", ["val/acc", "sqlite:////tmp/a b/optuna.db", "it's", "true", "1e-3",
                                   None, True, 3, 1e-5, "C:\\dir\\"])
def test_values_render_as_overrides_that_parse_back(value):
    assert OverridesParser.create().parse_override(f"k={as_override_text(value)}").value() == value


@pytest.mark.parametrize("name", SWEEPS)
def test_each_sweeps_file_composes_into_a_ready_campaign(name: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="test"):
        cfg = compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("FtexpOptunaSweeper") and cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweep.dir == f"outputs/sweeps/{name}" and sweeper.study_name == name
    assert sweeper.objectives and sweeper.n_trials >= 1
    space, _ = search_space([], sweeper.params)
    assert space
    if sweeper.sampler == "grid":  # the campaign covers its grid exactly
        sizes = [len(v) for v in grid_values(space).values()]
        assert sweeper.n_trials == math.prod(sizes)
    validate(cfg, resolve=False)


def _sweep_config(*overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="test"):
        return compose("config", overrides=["hydra/sweeper=ftexp_optuna", *overrides],
                       return_hydra_config=True)


def test_a_named_study_is_resumed_only_by_the_command_that_started_it(tmp_path: Path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")
    impl = FtexpOptunaSweeperImpl(study_name="s")
    impl.config = _sweep_config("adapter=lora", "hydra.sweeper.n_trials=3")
    impl._check_command(study, ["adapter=lora"])
    impl.config = _sweep_config("adapter=lora", "hydra.sweeper.n_trials=9")
    impl._check_command(study, ["adapter=lora"])  # more trials: the same study
    impl.config = _sweep_config("adapter=ia3")
    with pytest.raises(ConfigError, match=r"started by another command \(overrides: adapter=lora;"):
        impl._check_command(study, ["adapter=ia3"])
    impl.config = _sweep_config("adapter=lora", "++hydra.sweeper.params={adapter.r: 'choice(4, 8)'}")
    with pytest.raises(ConfigError, match="started by another command"):  # another search space
        impl._check_command(study, ["adapter=lora"])


def test_trials_of_a_vanished_worker_are_failed_and_queued_again(tmp_path: Path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    workers = {"stale elsewhere": ("elsewhere", 1, time.time() - 100),
               "beating elsewhere": ("elsewhere", 1, time.time()),
               "dead here": (socket.gethostname(), int(gone), time.time()),
               "alive here": (socket.gethostname(), os.getppid(), time.time() - 1000)}
    trials = {}
    for name, (host, pid, beat) in workers.items():
        trial = study.ask({"x": FloatDistribution(0, 1)})
        for key, value in ((HOST_ATTR, host), (PID_ATTR, pid), (HEARTBEAT_ATTR, beat)):
            study._storage.set_trial_system_attr(trial._trial_id, key, value)
        trials[name] = trial
    recover(study._storage, study, heartbeat_interval=10)
    state = {name: study._storage.get_trial(t._trial_id) for name, t in trials.items()}
    assert state["stale elsewhere"].state == state["dead here"].state == TrialState.FAIL
    assert state["beating elsewhere"].state == state["alive here"].state == TrialState.RUNNING
    assert "no heartbeat for 40 s" in state["stale elsewhere"].user_attrs[INTERRUPTED_ATTR]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs[RETRY_ATTR] for t in waiting) == sorted(
        [trials["stale elsewhere"].number, trials["dead here"].number])
    assert {t.system_attrs["fixed_params"]["x"] for t in waiting} == {trials["stale elsewhere"].params["x"],
                                                                      trials["dead here"].params["x"]}


def test_a_grid_sweep_ends_quietly_when_the_grid_is_done():
    """Optuna's GridSampler calls study.stop() after the last grid point, which raises outside
    study.optimize; the sweeper asks and tells, so its grid sampler must not."""
    space, _ = search_space(["x=choice(1,2)"], None)
    impl = FtexpOptunaSweeperImpl(sampler="grid", seed=0)
    study = optuna.create_study(sampler=impl._sampler(space))
    for _ in range(2):
        trial = study.ask({name: p.distribution for name, p in space.items()})
        study.tell(trial, trial.params["x"])
    assert sorted(t.params["x"] for t in study.trials) == [1, 2]


def test_storage_may_be_a_journal_file_or_a_relative_sqlite_path(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    impl = FtexpOptunaSweeperImpl(storage="sqlite:///rel/optuna.db")
    assert impl._storage_spec() == f"sqlite:///{tmp_path}/rel/optuna.db"
    impl = FtexpOptunaSweeperImpl(storage="studies/journal.log")
    spec = impl._storage_spec()
    assert spec == str(tmp_path / "studies" / "journal.log")
    assert impl._lock_path(spec).name == "journal.log.ftexp-lock"
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(storage=open_storage(spec), study_name="j")
    study.optimize(lambda trial: trial.suggest_int("x", 1, 1), n_trials=1)
    assert optuna.load_study(study_name="j", storage=open_storage(spec)).trials[0].params == {"x": 1}
    assert (tmp_path / "studies" / "journal.log").is_file()


# -- plugin discovery -----------------------------------------------------------------------------


def test_info_plugins_lists_the_sweeper_and_the_sweeps_source():
    result = run([sys.executable, "-m", "ftexp", "--info", "plugins"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    sweepers = result.stdout.split("Sweeper:")[1].split("Profiling")[0]
    assert "FtexpOptunaSweeper" in sweepers and "BasicSweeper" in sweepers
    assert "SweepsConfigSource" in result.stdout


def test_sweeper_is_registered_when_the_namespace_scan_misses_it():
    """An editable install that hides src/hydra_plugins from Hydra's scan: ftexp.cli registers
    the sweeper and the sweeps source itself, once."""
    script = """
import sys
from pathlib import Path
import ftexp
src = Path(ftexp.__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or '.').resolve() != src]
import ftexp.cli
from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
names = [c.__name__ for c in Plugins.instance().discover(Sweeper)]
print(names.count('FtexpOptunaSweeper'), Plugins.instance().get_stats().modules_import_time.keys())
with initialize_config_dir(str(ftexp.runs.paths.config_dir()), version_base='1.3', job_name='t'):
    cfg = compose('config', overrides=['+sweep=lora_rank_lr'], return_hydra_config=True)
print(cfg.hydra.sweeper._target_)
"""
    result = run([sys.executable, "-c", script], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = result.stdout.strip().splitlines()[-2:]
    assert first.startswith("1 ") and "ftexp_optuna_sweeper" not in first  # scan missed it, we did not
    assert second.endswith("FtexpOptunaSweeper")


# -- sweeps -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_sweep(split_csv: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """6 trials, random sampler (seed 4) over a good, a useless and an invalid learning rate, median
    pruning after the first complete trial, from the second report on (after one epoch some seeds'
    good trial led the useless one by a single validation row). Seed 4 draws: invalid, good, good,
    useless, useless, good. The rates come through hydra.sweeper.params: preflight would refuse -1
    on the command line."""
    sweep_dir = tmp_path_factory.mktemp("pruned") / "sweep"
    result = run(sweep_command(
        split_csv, sweep_dir, "hydra.sweeper.n_trials=6", "hydra.sweeper.sampler=random",
        "hydra.sweeper.seed=4", "hydra.sweeper.pruner=median",
        "+hydra.sweeper.pruner_kwargs={n_startup_trials: 1, n_warmup_steps: 2}",
        "++hydra.sweeper.params={optimizer.learning_rate: 'choice(1e-2, 1e-7, -1.0)'}"))
    return sweep_dir, result


def test_a_pruner_stops_bad_trials_early_and_they_are_recorded_pruned(pruned_sweep, margin):
    sweep_dir, result = pruned_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(sweep_dir)
    states = [t.state for t in study.trials]
    assert len(states) == 6 and TrialState.RUNNING not in states
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.params["optimizer.learning_rate"] == 1e-7 for t in pruned)
    for trial in pruned:  # reported after each evaluation, stopped before the last epoch
        assert 1 <= max(trial.intermediate_values) < 3
        run_dir = Path(trial.user_attrs["output_dir"])
        assert run_dir == sweep_dir / f"trial_{trial.number:04d}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["pruned"] is True and metrics["pruned_at_step"] == max(trial.intermediate_values)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.intermediate_values) == 3 for t in complete)
    best = study.best_trial
    assert best.params["optimizer.learning_rate"] == 1e-2
    margin.above("best trial's val/acc", best.value, 0.9)
    # What the pruner decided on: where it stopped a useless trial, the good trials led it.
    lead = min(min(t.intermediate_values[step] for t in complete) - trial.intermediate_values[step]
               for trial in pruned for step in [max(trial.intermediate_values)])
    margin.above("val/acc lead of the good trials where a useless one was pruned", lead, 0.1)
    # each run knows its trial, each trial its run
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    for trial in pruned + complete:
        config = yaml.safe_load((sweep_dir / f"trial_{trial.number:04d}" / "config.yaml").read_text())
        assert config["trial"] == {"study_name": study.study_name, "storage": storage,
                                   "number": trial.number, "monitor": "val/acc"}
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_trials"][0]["number"] == best.number


def test_a_failing_trial_is_recorded_fail_and_the_sweep_goes_on(pruned_sweep):
    sweep_dir, result = pruned_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(sweep_dir)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [0]
    assert "optimizer.learning_rate=-1.0 must be a positive number" in failed[0].user_attrs["error"]
    assert "ftexp: error: optimizer.learning_rate=-1.0" in result.stderr
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials[1:])


def test_too_many_failures_stop_the_sweep_with_one_line(split_csv: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    result = run(sweep_command(split_csv, sweep_dir, "hydra.sweeper.n_trials=10",
                               "++hydra.sweeper.params={optimizer.learning_rate: 'choice(-1.0, -2.0)'}"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ftexp: error: sweep stopped: 3 of 3 finished trials failed, more than "
                           "hydra.sweeper.max_failure_rate=0.5; last, trial 2: optimizer.learning_rate=")
    assert "Traceback" not in result.stderr
    assert [t.state for t in load_study(sweep_dir).trials] == [TrialState.FAIL] * 3


@pytest.mark.slow  # ~20 s (real sweep processes); the fast tier keeps the storage and pruning tests
def test_a_killed_sweep_resumes_without_redoing_finished_trials(split_csv: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    command = sweep_command(split_csv, sweep_dir, "optimizer.learning_rate=choice(1e-2,1e-7)",
                            "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler=random",
                            "hydra.sweeper.seed=0")
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:  # kill it as soon as its third trial has started
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            dirs = trial_dirs(sweep_dir)
            if sum((d / "metrics.json").exists() for d in dirs) >= 2 and len(dirs) >= 3:
                break
            time.sleep(0.1)
        assert first.poll() is None, "the sweep ended before it could be killed"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done_before = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in trial_dirs(sweep_dir)
                   if (d / "metrics.json").exists()}
    assert len(done_before) == 2
    assert [t.state for t in load_study(sweep_dir).trials].count(TrialState.RUNNING) == 1

    again = run(command)  # the same command

    assert again.returncode == 0, again.stderr[-3000:]
    study = load_study(sweep_dir)
    interrupted = [t for t in study.trials if t.user_attrs.get(INTERRUPTED_ATTR)]
    assert len(interrupted) == 1 and interrupted[0].state == TrialState.FAIL
    retry = [t for t in study.trials if t.user_attrs.get(RETRY_ATTR) == interrupted[0].number]
    assert len(retry) == 1 and retry[0].params == interrupted[0].params
    assert len(counted(study)) == 4 and all(t.state.is_finished() for t in counted(study))
    # the finished trials were not run again; 4 trials + the interrupted one have a run dir each
    assert {n: (sweep_dir / n / "metrics.json").stat().st_mtime_ns for n in done_before} == done_before
    assert len(trial_dirs(sweep_dir)) == 5
    assert "trial 2: its sweep process" in again.stderr + again.stdout


@pytest.mark.slow  # ~11 s: two sweep processes on one storage
def test_two_workers_share_one_study(split_csv: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    command = sweep_command(split_csv, sweep_dir, "optimizer.learning_rate=choice(1e-2,3e-3,1e-3)",
                            "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler=random")
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=ENV) for _ in range(2)]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    study = load_study(sweep_dir)
    assert [t.number for t in study.trials] == list(range(4))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.system_attrs[PID_ATTR] for t in study.trials} == {w.pid for w in workers}  # both worked
    numbers = [yaml.safe_load((d / "config.yaml").read_text())["trial"]["number"]
               for d in trial_dirs(sweep_dir)]
    assert sorted(numbers) == list(range(4))


# -- repeats ------------------------------------------------------------------------------------


def test_repeats_give_each_trial_seeds_from_the_configured_one():
    impl = FtexpOptunaSweeperImpl(repeats=3)
    impl.config = _sweep_config("seed=7")
    assert impl._seeds({}) == [7, 8, 9]
    impl.repeats = 1
    assert impl._seeds({}) == []  # one run per trial, with the configured seed
    impl.repeats = 2
    with pytest.raises(ConfigError, match="drop seed from the search space"):
        impl._seeds(search_space(["seed=choice(1,2)"], None)[0])
    impl.config = _sweep_config("seeds=2")
    with pytest.raises(ConfigError, match="use hydra.sweeper.repeats=k"):
        impl._seeds({})
    # a mean over seeds is another objective: another study
    assert sweep_id(_root_=_sweep_config("hydra.sweeper.repeats=2")) != sweep_id(_root_=_sweep_config())
    assert sweep_id(_root_=_sweep_config("hydra.sweeper.repeats=1")) == sweep_id(_root_=_sweep_config())


def test_a_benchmark_objective_needs_the_trials_to_evaluate_its_task():
    objective = [{"metric": "eval/ftexp_colours_mc/acc", "direction": "maximize"}]
    impl = FtexpOptunaSweeperImpl(objectives=objective)
    impl.config = _sweep_config("task=causal_lm", "eval=lm_eval", "eval.tasks=[ftexp_colours_mc]")
    assert [(o.metric, o.direction) for o in impl._objectives()] == [
        ("eval/ftexp_colours_mc/acc", "maximize")]
    impl.config = _sweep_config("task=causal_lm")
    with pytest.raises(ConfigError, match=r"the trials evaluate none: add eval=lm_eval "
                                          r"eval.tasks=\[ftexp_colours_mc\]"):
        impl._objectives()
    impl.config = _sweep_config("task=causal_lm", "eval=lm_eval", "eval.tasks=[ftexp_sums_gen]")
    with pytest.raises(ConfigError, match="task 'ftexp_colours_mc' is not in eval.tasks"):
        impl._objectives()


@pytest.mark.parametrize("repeats", ["0", "-1"])
def test_repeats_below_one_get_one_line(repeats: str, tmp_path: Path, monkeypatch, capsys):
    from conftest import assert_one_line, run_in_process

    code, stderr = run_in_process(["-m", "hydra/sweeper=ftexp_optuna", f"hydra.sweeper.repeats={repeats}",
                                   f"hydra.sweep.dir={tmp_path / 'sweep'}"], monkeypatch, capsys)
    assert code == 2
    assert_one_line(stderr, f"hydra.sweeper.repeats={repeats}: each trial needs at least one run")


def test_a_sweep_with_repeats_tells_the_study_the_mean_over_seeds(split_csv: Path, tmp_path: Path,
                                                                  monkeypatch, capsys):
    """2 trials × 2 seeds, median pruning: the good learning rate first (grid order of sampler seed
    1), then the useless one, which its first seed's curve prunes before its second seed runs.
    In this process (the launcher runs trials in the sweep's process anyway): no interpreter start."""
    from conftest import run_in_process

    sweep_dir = tmp_path / "sweep"
    command = sweep_command(split_csv, sweep_dir, "trainer.max_epochs=2", "seed=3",
                            "optimizer.learning_rate=choice(1e-2,1e-7)", "hydra.sweeper.sampler=grid",
                            "hydra.sweeper.seed=1", "hydra.sweeper.n_trials=2", "hydra.sweeper.repeats=2",
                            "hydra.sweeper.pruner=median",
                            "+hydra.sweeper.pruner_kwargs={n_startup_trials: 1}")
    code, stderr = run_in_process(command[3:], monkeypatch, capsys)  # without `python -m ftexp`
    assert code == 0, stderr[-3000:]
    good, useless = load_study(sweep_dir).trials
    assert good.params["optimizer.learning_rate"] == 1e-2 and good.state == TrialState.COMPLETE
    runs = [sweep_dir / "trial_0000" / f"seed_{seed}" for seed in (3, 4)]
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
    values = [m["val/acc"] for m in metrics]  # no checkpoint: the objective falls back to the last value
    assert values[0] != values[1] and good.value == pytest.approx(sum(values) / 2)
    assert good.user_attrs["seeds"] == [3, 4]
    assert good.user_attrs["seed_values"] == {"3": [values[0]], "4": [values[1]]}
    assert [m["seed"] for m in metrics] == [3, 4] and metrics[0]["group"] == metrics[1]["group"]
    assert len(good.intermediate_values) == 2  # the first seed's curve alone
    # the second seed did not report: no pruning monitor in its trial node
    assert yaml.safe_load((runs[1] / "config.yaml").read_text())["trial"]["monitor"] is None
    assert useless.state == TrialState.PRUNED and useless.params["optimizer.learning_rate"] == 1e-7
    assert [p.name for p in (sweep_dir / "trial_0001").iterdir()] == ["seed_3"]

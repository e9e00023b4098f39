"""The experiment loggers a run writes to (the `logger` group): one `_target_` node per logger.

Each option in conf/logger/ holds named nodes, e.g. `csv: {_target_: …CSVLogger, name: csv}`;
`build_loggers` instantiates every node (a node set to null is left out) and wires it to the run:
a constructor that takes `save_dir` gets the run dir (a relative `save_dir` is taken inside it),
one that takes `run_dir` / `run` (our factories below) gets the run dir and what the run records
about itself. `check_logger_nodes` validates the nodes without building anything.

W&B runs are offline unless WANDB_API_KEY is set (or `logger.wandb.mode=online`); their files go
under the run dir (`<run dir>/wandb/`). MLflow logs to a store in `<run dir>/mlflow/` unless a
`tracking_uri` is given. The W&B / MLflow run id is kept in the run dir, so a run started again in
the same dir continues the same W&B / MLflow run. `closing_loggers()` wraps a job so every W&B
and MLflow run it opened is finished, as failed when the job raised.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import string
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from ftexp.runs import atomic
from ftexp.runs.errors import ConfigError
from ftexp.runs.objective import PRUNED, is_pruned

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"  # the W&B run id of the run dir, reused when the run starts again
MLFLOW_ID_FILE = "mlflow_run_id"  # the same for MLflow
MLFLOW_DIR = "mlflow"  # the run dir's own MLflow store: mlflow.db and artifacts/
WandbMode = Literal["auto", "offline", "online", "disabled"]
WANDB_MODES = typing.get_args(WandbMode)
_TAG_MAX = 64  # W&B refuses longer tags
_IGNORED_CHOICES = ("local", "paths")  # machine-specific groups: not a property of the experiment
# Constructor arguments the builder fills from the run; a node must not set them.
_WIRING = ("run_dir", "run")
# Packages a logger needs when it is built (any one of them will do), by the target's name:
# Lightning's logger classes import without them. The pip extra comes from targets.EXTRAS.
_PACKAGES: dict[str, tuple[str, ...]] = {
    "TensorBoardLogger": ("tensorboard", "tensorboardX"),
    "MLFlowLogger": ("mlflow",), "mlflow_logger": ("mlflow",),
    "WandbLogger": ("wandb",), "wandb_logger": ("wandb",),
}


# -- validation ------------------------------------------------------------------------------------

def _check_node(name: str, node: Any) -> Callable[..., Any]:
    """The node checked against its target's signature (builders/targets.py), then the package
    its logger needs at construction (Lightning's logger classes import without it)."""
    from ftexp.builders.targets import EXTRAS, check_node

    target = check_node(node, f"logger.{name}", wired=_WIRING, provided=("save_dir",))
    modules = _PACKAGES.get(getattr(target, "__name__", ""), ())
    if modules and not any(importlib.util.find_spec(m) for m in modules):
        raise ConfigError(f"logger.{name} needs the {modules[0]} package: "
                            f"pip install 'ftexp[{EXTRAS[modules[0]]}]'.")
    return target


def check_logger_nodes(settings: dict[str, Any] | None) -> None:
    """Raise a one-line ConfigError for the first bad node of the resolved `logger` group: no
    `_target_`, a target that cannot be imported, a key its constructor does not take (with a
    did-you-mean), a bad choice, a missing required key or package. Builds nothing; imports
    only the targets' modules."""
    if not settings:
        return
    if not isinstance(settings, dict):
        raise ConfigError(f"logger must be a mapping of named `_target_` nodes (conf/logger/); "
                            f"got {settings!r}.")
    for name, node in settings.items():
        if node is not None:
            _check_node(str(name), node)


# -- building ---------------------------------------------------------------------------------------

def build_loggers(settings: dict[str, Any], run_dir: Path, run: dict[str, Any] | None = None) -> list[Any]:
    """Lightning loggers for `settings` (the resolved `logger` group: named `_target_` nodes),
    in their order; [] when none is asked. `run` holds what loggers record about the run besides
    their own settings: `config` (the resolved config, secrets redacted), `task`, `group` (runs
    that differ only by seed share it), `study_name` / `trial_number` (sweep trials) and `choices`
    (the chosen group options)."""
    from ftexp.builders.targets import instantiate_node

    check_logger_nodes(settings)
    run_dir = Path(run_dir)
    loggers: list[Any] = []
    for name, node in (settings or {}).items():
        if node is None:
            continue
        node = dict(node)
        if node.get("save_dir") is not None:
            node["save_dir"] = str(run_dir / node["save_dir"])  # relative: inside the run dir; absolute stays
        try:
            logger = instantiate_node(node, f"logger.{name}", _WIRING, save_dir=str(run_dir),
                                      run_dir=run_dir, run=run or {})
        except ModuleNotFoundError as err:
            raise ConfigError(f"logger.{name} ({node['_target_']}) needs a package that is not "
                                f"installed: {str(err).splitlines()[0]}") from err
        if logger is not None:
            loggers.append(logger)
    return loggers


# -- shared by W&B and MLflow ------------------------------------------------------------------------

def chosen_options(choices: dict[str, Any]) -> list[tuple[str, str]]:
    """(group, option) for each chosen config group, Hydra's own and machine-specific groups left
    out; a list of options (`logger=[csv,mlflow]`) gives one pair each."""
    pairs = []
    for group, option in sorted(choices.items()):
        if option is None or group.startswith("hydra") or group in _IGNORED_CHOICES:
            continue
        for one in option if isinstance(option, (list, tuple)) else [option]:
            pairs.append((group, str(one)))
    return pairs


def run_display_name(run_dir: Path, study_name: str | None, trial_number: int | None) -> str:
    """`<study>-<trial>` for a sweep trial (`-seed_<n>` added for a trial's repeats); the run dir's
    name, with its parent's name for multirun job dirs named by a bare number and the seed dirs of
    a `seeds=` run (`seed_<n>`)."""
    seed_dir = run_dir.name.startswith("seed_")
    if study_name and trial_number is not None:
        return f"{study_name}-{trial_number}" + (f"-{run_dir.name}" if seed_dir else "")
    if run_dir.name.isdigit() or seed_dir:
        return f"{run_dir.parent.name}/{run_dir.name}"
    return run_dir.name


def _kept_run_id(path: Path) -> str | None:
    """The run id kept in `path` by an earlier start in the same run dir."""
    return (path.read_text().strip() or None) if path.is_file() else None


# -- W&B ----------------------------------------------------------------------------------------------

def wandb_mode(setting: str, environ: dict[str, str] | None = None) -> str:
    """`auto` → online when WANDB_API_KEY is set (or as WANDB_MODE says), else offline."""
    env = os.environ if environ is None else environ
    if setting != "auto":
        return setting
    forced = env.get("WANDB_MODE", "").strip().lower()
    if forced in ("offline", "dryrun"):
        return "offline"
    if forced == "disabled":
        return "disabled"
    return "online" if env.get("WANDB_API_KEY") else "offline"


def wandb_tags(choices: dict[str, Any], extra: list[str] | None = None) -> list[str]:
    """`group:option` for each chosen config group (Hydra's own groups left out), then `extra`."""
    tags = [f"{group}:{option}" for group, option in chosen_options(choices)]
    tags += [str(t) for t in extra or []]
    return [t[:_TAG_MAX] for t in dict.fromkeys(tags)]


def _wandb_run_id(run_dir: Path) -> tuple[str, bool]:
    """(id, resuming): the id kept in the run dir, or a new one written there."""
    path = run_dir / WANDB_ID_FILE
    kept = _kept_run_id(path)
    if kept:
        return kept, True
    alphabet = string.ascii_lowercase + string.digits  # what W&B's own ids are made of
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    atomic.write_text(path, run_id + "\n")
    return run_id, False


def wandb_logger(mode: WandbMode = "auto", project: str = "ftexp", entity: str | None = None,
                 name: str | None = None, group: str | None = None, tags: list[str] | None = None, *,
                 run_dir: Path, run: dict[str, Any] | None = None) -> Any | None:
    """A Lightning WandbLogger around a W&B run started now (None when mode is `disabled`, and
    on ranks other than zero). The `logger.wandb` node's `_target_` (conf/logger/wandb.yaml).

    `run` holds what the builder cannot read from the node: `config` (the resolved config to
    log), `group` (ftexp's run group: runs that differ only by seed, the W&B group unless the node
    names one), `study_name` / `trial_number` (sweep trials, also a `study:<name>` tag), `task`
    (the job type) and `choices` (chosen group options, for tags).
    """
    run = run or {}
    resolved = wandb_mode(mode)
    if resolved == "disabled":
        log.info("W&B: disabled (logger.wandb.mode=disabled)")
        return None
    try:
        import wandb
        from lightning.pytorch.loggers import WandbLogger
    except ImportError as err:  # pragma: no cover - wandb is in the dev and wandb extras
        raise ConfigError("logger=wandb needs the wandb package: pip install 'ftexp[wandb]'.") from err

    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # one W&B run per job: rank zero's (Lightning logs only there)
        return None
    run_id, resuming = _wandb_run_id(run_dir)
    study, number = run.get("study_name"), run.get("trial_number")
    experiment = wandb.init(
        project=project or "ftexp",
        entity=entity,
        name=name or run_display_name(run_dir, study, number),
        group=group or run.get("group") or study or None,
        job_type=run.get("task"),
        tags=wandb_tags(run.get("choices") or {}, [*([f"study:{study}"] if study else []), *(tags or [])]),
        config=run.get("config"),
        dir=str(run_dir),
        id=run_id,
        resume="allow",
        mode=resolved,  # type: ignore[arg-type]
        reinit="finish_previous",
        settings=wandb.Settings(console="off", save_code=False, disable_git=True),
    )
    # What WandbLogger does for runs it starts itself: metrics plotted against the global step.
    experiment.define_metric("trainer/global_step")
    experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    log.info("W&B: %s run %s%s, files in %s", resolved, experiment.id, " (resumed)" if resuming else "",
             run_dir / "wandb")
    logger = _ConfigOnlyWandbLogger(WandbLogger)(experiment=experiment, save_dir=run_dir)
    _opened(lambda code, summary: _finish_wandb(experiment, code, summary))
    return logger


def _ConfigOnlyWandbLogger(base: type) -> type:  # noqa: N802 - a class factory
    """WandbLogger that leaves the W&B config as given to wandb.init: the whole resolved config,
    secrets redacted. (Lightning would add the task's hyperparameters, the same groups again,
    unredacted.)"""

    class ConfigOnlyWandbLogger(base):  # type: ignore[misc, valid-type]
        def log_hyperparams(self, params: Any) -> None:
            return None

    return ConfigOnlyWandbLogger


def _finish_wandb(experiment: Any, exit_code: int, summary: dict[str, Any] | None) -> None:
    if summary:
        experiment.summary.update({k: v for k, v in summary.items()
                                   if isinstance(v, (int, float, str, bool))})
    experiment.finish(exit_code=exit_code)


# -- MLflow -------------------------------------------------------------------------------------------

def mlflow_logger(experiment_name: str = "ftexp", tracking_uri: str | None = None,
                  run_name: str | None = None, tags: dict[str, Any] | None = None,
                  log_model: bool = False, *, run_dir: Path, run: dict[str, Any] | None = None) -> Any | None:
    """A Lightning MLFlowLogger (None on ranks other than zero). The `logger.mlflow` node's
    `_target_` (conf/logger/mlflow.yaml).

    Without `tracking_uri` the run logs offline to its own store, `<run dir>/mlflow/mlflow.db`
    (SQLite; MLflow 3 refuses its file store unless told to), artifacts in
    `<run dir>/mlflow/artifacts/`; MLFLOW_TRACKING_URI is not followed implicitly. The run is
    named like the W&B run and tagged with the task and the chosen group options.
    """
    run = run or {}
    try:
        import mlflow  # noqa: F401
        from lightning.pytorch.loggers import MLFlowLogger
    except ImportError as err:  # pragma: no cover - mlflow is in the dev and mlflow extras
        raise ConfigError("logger=mlflow needs the mlflow package: pip install 'ftexp[mlflow]'.") from err

    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # one MLflow run per job, and one writer of the store
        return None
    artifact_location = None
    if not tracking_uri:
        store = (run_dir / MLFLOW_DIR).resolve()
        store.mkdir(parents=True, exist_ok=True)
        tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
        artifact_location = (store / "artifacts").as_uri()
    all_tags = {group: option for group, option in chosen_options(run.get("choices") or {})}
    if run.get("task"):
        all_tags["task"] = str(run["task"])
    if run.get("group"):  # MLflow has no run groups: runs that differ only by seed share this tag
        all_tags["group"] = str(run["group"])
    all_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
    id_file = run_dir / MLFLOW_ID_FILE
    kept = _kept_run_id(id_file)

    def start(run_id: str | None) -> Any:
        return MLFlowLogger(
            experiment_name=experiment_name, tracking_uri=tracking_uri, tags=all_tags or None,
            run_name=run_name or run_display_name(run_dir, run.get("study_name"), run.get("trial_number")),
            artifact_location=artifact_location, log_model=log_model, run_id=run_id)

    logger = start(kept)
    try:
        run_id = logger.run_id  # starts (or finds) the run now, so its id is kept before training
    except Exception as err:
        if not kept:
            raise
        # The kept run is not in this store (another tracking_uri, a deleted store): a new run.
        log.warning("MLflow: run %s is not in %s (%s); starting a new run", kept, tracking_uri,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        kept = None
        logger = start(None)
        run_id = logger.run_id
    if run_id != kept:
        atomic.write_text(id_file, f"{run_id}\n")
    log.info("MLflow: run %s%s in %s", run_id, " (resumed)" if kept else "", tracking_uri)
    _opened(lambda code, summary: logger.finalize(
        "KILLED" if (summary or {}).get(PRUNED) else "FAILED" if code else "FINISHED"))
    return logger


# -- finishing --------------------------------------------------------------------------------------

class LoggerSession:
    """The W&B / MLflow runs opened while a job runs, finished when it ends."""

    def __init__(self) -> None:
        # One closer per opened run: closer(exit_code, summary).
        self.opened: list[Callable[[int, dict[str, Any] | None], None]] = []
        self.metrics: dict[str, Any] | None = None

    def result(self, metrics: dict[str, Any]) -> None:
        """The job's final metrics: they go to the W&B summary when the runs are finished."""
        self.metrics = metrics

    def close(self, exit_code: int, summary: dict[str, Any] | None = None) -> None:
        for closer in self.opened:
            try:
                closer(exit_code, summary)
            except Exception as err:  # never hide the job's own error behind a logging one
                log.warning("could not finish a logger's run: %s", err)
        self.opened.clear()


_SESSIONS: list[LoggerSession] = []


def _opened(closer: Callable[[int, dict[str, Any] | None], None]) -> None:
    """Have the innermost closing_loggers() block finish a run opened now."""
    if _SESSIONS:
        _SESSIONS[-1].opened.append(closer)


@contextlib.contextmanager
def closing_loggers() -> Iterator[LoggerSession]:
    """Finish every W&B / MLflow run opened inside the block: exit code 0, or 1 when the block
    raises (a pruned sweep trial counts as finished). Call `session.result(metrics)` to put the
    job's final metrics in the W&B summary first."""
    session = LoggerSession()
    _SESSIONS.append(session)
    try:
        yield session
    except BaseException as err:
        pruned = is_pruned(err)  # Optuna's TrialPruned: the trial ended as the study asked
        session.close(0 if pruned else 1, {PRUNED: True} if pruned else None)
        raise
    else:
        session.close(0, session.metrics)
    finally:
        _SESSIONS.remove(session)

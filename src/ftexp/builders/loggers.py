"""The experiment loggers a run writes to (the `logger` group): CSV, and W&B when asked.

W&B runs are offline unless WANDB_API_KEY is set (or `wandb_mode=online`); their files go under
the run dir (`<run dir>/wandb/`). The W&B run id is kept in `<run dir>/wandb_run_id`, so a run
started again in the same dir continues the same W&B run. `closing_loggers()` wraps a job so
every W&B run it opened is finished, with exit code 1 when the job raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"  # the W&B run id of the run dir, reused when the run starts again
WANDB_MODES = ("auto", "offline", "online", "disabled")
_TAG_MAX = 64  # W&B refuses longer tags
_IGNORED_CHOICES = ("local", "paths")  # machine-specific groups: not a property of the experiment


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
    tags = [f"{group}:{option}" for group, option in sorted(choices.items())
            if option is not None and not group.startswith("hydra") and group not in _IGNORED_CHOICES]
    tags += [str(t) for t in extra or []]
    return [t[:_TAG_MAX] for t in dict.fromkeys(tags)]


def wandb_run_name(run_dir: Path, study_name: str | None, trial_number: int | None) -> str:
    """`<study>-<trial>` for a sweep trial; the run dir's name, with its sweep dir's name for
    multirun job dirs named by a bare number."""
    if study_name and trial_number is not None:
        return f"{study_name}-{trial_number}"
    if run_dir.name.isdigit():
        return f"{run_dir.parent.name}/{run_dir.name}"
    return run_dir.name


def _wandb_run_id(run_dir: Path) -> tuple[str, bool]:
    """(id, resuming): the id kept in the run dir, or a new one written there."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), True
    alphabet = string.ascii_lowercase + string.digits  # what W&B's own ids are made of
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    path.write_text(run_id + "\n")
    return run_id, False


def build_wandb_logger(settings: dict[str, Any], run_dir: Path, run: dict[str, Any]) -> Any | None:
    """A Lightning WandbLogger around a W&B run started now (None when mode is `disabled`).

    `run` holds what the builder cannot read from `settings`: `config` (the resolved config to
    log), `study_name` / `trial_number` (sweep trials), `task` (the job type) and `choices`
    (chosen group options, for tags).
    """
    mode = wandb_mode(settings.get("wandb_mode", "auto"))
    if mode == "disabled":
        log.info("W&B: disabled (logger.wandb_mode=disabled)")
        return None
    try:
        import wandb
        from lightning.pytorch.loggers import WandbLogger
    except ImportError as err:  # pragma: no cover - wandb is in the dev and wandb extras
        from ftexp.errors import ConfigError

        raise ConfigError("logger=wandb needs the wandb package: pip install 'ftexp[wandb]'.") from err

    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # one W&B run per job: rank zero's (Lightning logs only there)
        return None
    run_id, resuming = _wandb_run_id(run_dir)
    study, number = run.get("study_name"), run.get("trial_number")
    experiment = wandb.init(
        project=settings.get("wandb_project") or "ftexp",
        entity=settings.get("wandb_entity"),
        name=settings.get("wandb_name") or wandb_run_name(run_dir, study, number),
        group=settings.get("wandb_group") or study or None,
        job_type=run.get("task"),
        tags=wandb_tags(run.get("choices") or {}, settings.get("wandb_tags")),
        config=run.get("config"),
        dir=str(run_dir),
        id=run_id,
        resume="allow",
        mode=mode,  # type: ignore[arg-type]
        reinit="finish_previous",
        settings=wandb.Settings(console="off", save_code=False, disable_git=True),
    )
    # What WandbLogger does for runs it starts itself: metrics plotted against the global step.
    experiment.define_metric("trainer/global_step")
    experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    log.info("W&B: %s run %s%s, files in %s", mode, experiment.id, " (resumed)" if resuming else "",
             run_dir / "wandb")
    logger = _ConfigOnlyWandbLogger(WandbLogger)(experiment=experiment, save_dir=run_dir)
    if _SESSIONS:  # finished by the innermost closing_loggers() block
        _SESSIONS[-1].opened.append(experiment)
    return logger


def _ConfigOnlyWandbLogger(base: type) -> type:  # noqa: N802 - a class factory
    """WandbLogger that leaves the W&B config as given to wandb.init: the whole resolved config,
    secrets redacted. (Lightning would add the task's hyperparameters, the same groups again,
    unredacted.)"""

    class ConfigOnlyWandbLogger(base):  # type: ignore[misc, valid-type]
        def log_hyperparams(self, params: Any) -> None:
            return None

    return ConfigOnlyWandbLogger


def build_loggers(settings: dict[str, Any], run_dir: Path, run: dict[str, Any] | None = None) -> list[Any]:
    """Lightning loggers for `settings` (the resolved `logger` group); [] when none is asked."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = []
    if settings.get("csv"):
        loggers.append(CSVLogger(save_dir=run_dir, name="csv", version=""))
    if settings.get("wandb"):
        wandb_logger = build_wandb_logger(settings, run_dir, run or {})
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    return loggers


class LoggerSession:
    """The W&B runs opened while a job runs, finished when it ends."""

    def __init__(self) -> None:
        self.opened: list[Any] = []
        self.metrics: dict[str, Any] | None = None

    def result(self, metrics: dict[str, Any]) -> None:
        """The job's final metrics: they go to the W&B summary when the runs are finished."""
        self.metrics = metrics

    def close(self, exit_code: int, summary: dict[str, Any] | None = None) -> None:
        for experiment in self.opened:
            try:
                if summary:
                    experiment.summary.update({k: v for k, v in summary.items()
                                               if isinstance(v, (int, float, str, bool))})
                experiment.finish(exit_code=exit_code)
            except Exception as err:  # never hide the job's own error behind a logging one
                log.warning("W&B: could not finish run %s: %s", getattr(experiment, "id", "?"), err)
        self.opened.clear()


_SESSIONS: list[LoggerSession] = []


def _is_pruned(err: BaseException) -> bool:
    """Optuna's TrialPruned (matched by name: optuna need not be imported here)."""
    return any(c.__name__ == "TrialPruned" for c in type(err).__mro__)


@contextlib.contextmanager
def closing_loggers() -> Iterator[LoggerSession]:
    """Finish every W&B run opened inside the block: exit code 0, or 1 when the block raises
    (a pruned sweep trial counts as finished). Call `session.result(metrics)` to put the job's
    final metrics in the W&B summary first."""
    session = LoggerSession()
    _SESSIONS.append(session)
    try:
        yield session
    except BaseException as err:
        session.close(0 if _is_pruned(err) else 1, {"pruned": True} if _is_pruned(err) else None)
        raise
    else:
        session.close(0, session.metrics)
    finally:
        _SESSIONS.remove(session)


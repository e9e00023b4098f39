"""Optuna pruning for sweep trials: after each evaluation the run reports `trial.monitor` to its
study and, when the study's pruner says so, stops training cleanly.

The run knows its trial from the `trial` node the sweeper fills (study name, storage, number,
monitor); it rebuilds the study's pruner from the study itself (the sweeper stores its settings
there, see hydra_plugins/ftexp_optuna_sweeper/_study.py), so a trial launched in another process
or on another machine prunes the same way.

Why not `optuna_integration.PyTorchLightningPruningCallback`: it raises `optuna.TrialPruned`
inside Lightning's validation hook, so `trainer.fit` unwinds mid-loop (teardown through Lightning's
exception path), nothing after it in the job runs (no test split, no metrics.json, no final
checkpoint bookkeeping) and the launcher sees a failed job; under DDP it needs a separate
`check_pruned()` call after fit. Setting `trainer.should_stop` instead ends the fit the normal
way: the run dir is complete, the job returns `pruned: true` with its metrics, and the sweeper
records the trial PRUNED. Only rank zero talks to the storage; the decision is broadcast.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L

from ftexp.runs.objective import pruned_metrics

log = logging.getLogger(__name__)


class OptunaPruning(L.Callback):
    """Inert unless the run is a sweep trial with a monitor (`trial.number` and `trial.monitor`)."""

    def __init__(self, trial: Mapping[str, Any]) -> None:
        self.storage, self.study_name = trial.get("storage"), trial.get("study_name")
        self.number, self.monitor = trial.get("number"), trial.get("monitor")
        self.active = bool(self.number is not None and self.monitor and self.storage and self.study_name)
        self.evaluations = 0  # the step reported: evaluations so far (= epochs, by default)
        self.pruned_at: int | None = None
        self._trial: Any = None
        self._warned = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active and trainer.is_global_zero and self._trial is None:
            # The sweeper's own helpers (optuna; imported only in sweep trials).
            from hydra_plugins.ftexp_optuna_sweeper._study import open_trial

            self._trial = open_trial(self.storage, self.study_name, int(self.number))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.evaluations += 1
        prune, value = False, None
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                if not self._warned:
                    log.warning("pruning: '%s' is not among the logged metrics (%s); not reporting",
                                self.monitor, ", ".join(sorted(trainer.callback_metrics)))
                    self._warned = True
            else:
                self._trial.report(float(value), step=self.evaluations)
                prune = self._trial.should_prune()
        if trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned_at = self.evaluations
            trainer.should_stop = True
            log.info("trial %s pruned after evaluation %d (%s=%s): stopping", self.number,
                     self.evaluations, self.monitor, "?" if value is None else f"{float(value):.4g}")

    def summary(self) -> dict[str, Any]:
        """What goes into the run's metrics: `pruned` and the step it was pruned at, if it was."""
        return pruned_metrics(self.pruned_at)

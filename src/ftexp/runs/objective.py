"""What an objective is, which way a metric is better, and what a pruned trial looks like: one
definition shared by the config checks, the sweeper, the loggers and the report.

Light on purpose (standard library only; no torch, no optuna): Hydra's plugin scan, the report
and the config checks import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAXIMIZE, MINIMIZE = "maximize", "minimize"  # Optuna's words (a study's directions)
DIRECTIONS = (MAXIMIZE, MINIMIZE)
MONITOR_MODES = ("max", "min")  # Lightning's words (task.monitor_mode, ModelCheckpoint's mode)

# Metrics better when lower, by the last part of their name (val/loss → loss): what the tasks
# report (loss, perplexity, mse, mae) …
LOWER_IS_BETTER = ("loss", "perplexity", "mse", "mae")
# … and what a run costs or gets wrong (peak_memory_gib, optimizer_state_mib, fit_seconds,
# trainable_params, error rates). Every word is matched inside the name, so rmse and
# val/loss_epoch are lower-is-better too.
COST_WORDS = ("memory", "seconds", "params", "error", "mib")

# A pruned run: the metrics a job returns (= metrics.json) say `pruned: true`, and the step it was
# pruned at; the report shows its state as `pruned`, Optuna records it PRUNED.
PRUNED = "pruned"
PRUNED_AT_STEP = "pruned_at_step"


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of `metric` are better (val/loss, test/perplexity, val/mae,
    peak_memory_gib, …); everything else (val/acc, val/f1_macro, val/r2, …) is higher-is-better."""
    name = str(metric).rsplit("/", 1)[-1].lower()
    return any(word in name for word in LOWER_IS_BETTER + COST_WORDS)


def direction(metric: str) -> str:
    """`minimize` or `maximize`: the direction `metric` is better in."""
    return MINIMIZE if lower_is_better(metric) else MAXIMIZE


def monitor_mode(metric: str) -> str:
    """`min` or `max`: the task.monitor_mode that keeps the best checkpoint of `metric`."""
    return "min" if lower_is_better(metric) else "max"


def mode_to_direction(mode: str) -> str:
    """`max` → `maximize`, `min` → `minimize` (a direction is returned as it is)."""
    found = {"max": MAXIMIZE, "min": MINIMIZE, MAXIMIZE: MAXIMIZE, MINIMIZE: MINIMIZE}.get(str(mode).lower())
    if found is None:
        raise ValueError(f"'{mode}' is neither a monitor mode ({', '.join(MONITOR_MODES)}) nor a "
                         f"direction ({', '.join(DIRECTIONS)})")
    return found


def direction_to_mode(value: str) -> str:
    """`maximize` → `max`, `minimize` → `min` (a mode is returned as it is)."""
    return "max" if mode_to_direction(value) == MAXIMIZE else "min"


def is_pruned(err: BaseException) -> bool:
    """Optuna's TrialPruned, or a subclass (matched by name: optuna need not be imported)."""
    return any(c.__name__ == "TrialPruned" for c in type(err).__mro__)


def was_pruned(metrics: Mapping[str, Any] | None) -> bool:
    """Whether a job's metrics say its run was pruned (it stopped early, but completely)."""
    return bool(metrics and metrics.get(PRUNED))


def pruned_metrics(step: int | None) -> dict[str, Any]:
    """What a pruned run adds to its metrics: `pruned` and the step it was pruned at (nothing
    when `step` is None: not pruned)."""
    return {PRUNED: True, PRUNED_AT_STEP: step} if step is not None else {}


@dataclass
class Objective:
    """A metric to optimise and the direction it is better in (`maximize` / `minimize`)."""
    metric: str
    direction: str = MAXIMIZE

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"objective '{self.metric}': direction '{self.direction}' is not one of "
                             f"{', '.join(DIRECTIONS)}")

    @classmethod
    def for_metric(cls, metric: str, mode: str | None = None) -> Objective:
        """`metric` in `mode` (max / min / maximize / minimize), else in its natural direction."""
        return cls(metric, mode_to_direction(mode) if mode else direction(metric))

    @property
    def sign(self) -> int:
        """+1 to maximize, -1 to minimize: `sign * value` is larger for better values."""
        return 1 if self.direction == MAXIMIZE else -1

    @property
    def mode(self) -> str:
        """`max` or `min`, Lightning's word for the direction."""
        return direction_to_mode(self.direction)

    def better(self, a: float, b: float) -> bool:
        """Whether value `a` is strictly better than `b`."""
        return self.sign * a > self.sign * b

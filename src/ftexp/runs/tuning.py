"""Settings measured before training: `data.batch_size: auto` (the largest batch that fits) and
the learning rate (`auto`: the method's documented default; `find`: an LR range test), both by
Lightning's tuner, and the learning-rate scaling with the number of processes."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ftexp.builders.optim import auto_learning_rate, scale_learning_rate
from ftexp.runs import atomic

log = logging.getLogger(__name__)


def configured_learning_rate(learning_rate: Any, adapter_method: str, world_size: int,
                             scaling: str) -> float | None:
    """The optimizer's starting learning rate from the config: a number or `auto`, scaled by the
    number of processes; None for `find` (measured later, on the real setup, so not scaled)."""
    if learning_rate == "find":
        return None
    base = auto_learning_rate(adapter_method) if learning_rate == "auto" else float(learning_rate)
    if learning_rate == "auto":
        log.info("learning rate: %g (the default for adapter=%s)", base, adapter_method)
    scaled = scale_learning_rate(base, world_size, scaling)
    if scaled != base:
        log.info("learning rate scaled (%s, %d processes): %g → %g", scaling, world_size, base, scaled)
    return scaled


def largest_power_of_two(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def find_batch_size(trainer: Any, task: Any, datamodule: Any, max_batch_size: int) -> int:
    """Double the batch from 2 while a few training steps fit in memory (Lightning's power
    search), up to max_batch_size and the training set's size; the result is a power of two."""
    from lightning.pytorch.tuner import Tuner

    datamodule.batch_size = 2
    trials = max(1, int(math.log2(max(2, max_batch_size))))  # 2, 4, … up to max_batch_size
    found = Tuner(trainer).scale_batch_size(task, datamodule=datamodule, mode="power", init_val=2,
                                           max_trials=trials, steps_per_trial=2)
    cap = min(int(found or 2), max_batch_size, len(datamodule.datasets["train"]))
    batch_size = largest_power_of_two(cap)
    datamodule.batch_size = batch_size
    log.info("batch_size auto: %d (largest power of two that fits, at most data.max_batch_size=%d "
             "and %d training rows)", batch_size, max_batch_size, len(datamodule.datasets["train"]))
    return batch_size


def find_learning_rate(trainer: Any, task: Any, datamodule: Any, plot_path: Path) -> float:
    """Lightning's LR range test: the rate rises exponentially over 100 steps while the
    loss is recorded; the suggestion is the steepest descent. The plot is saved beside the run."""
    from lightning.pytorch.tuner import Tuner

    steps = 100  # Lightning's default
    # The test stops at trainer.max_epochs too: lift it so a small training set is cycled through.
    max_epochs = trainer.fit_loop.max_epochs
    trainer.fit_loop.max_epochs = max(max_epochs, steps)
    try:
        finder = Tuner(trainer).lr_find(task, datamodule=datamodule, min_lr=1e-7, max_lr=1.0,
                                        num_training=steps, update_attr=False)
    finally:
        trainer.fit_loop.max_epochs = max_epochs
    suggestion = finder.suggestion() if finder is not None else None
    if finder is not None:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers
        figure = finder.plot(suggest=suggestion is not None)
        image_format = Path(plot_path).suffix.lstrip(".") or "png"  # the temporary name ends in .tmp
        with atomic.atomic_path(plot_path) as tmp:
            figure.savefig(tmp, dpi=120, bbox_inches="tight", format=image_format)
        log.info("LR range test plot: %s", plot_path)
    if suggestion is None:
        from ftexp.runs.errors import ConfigError

        raise ConfigError("learning_rate=find could not suggest a rate from the range test (the "
                          "loss never fell steadily); set optimizer.learning_rate to a number.")
    log.info("learning rate found: %.3g (steepest loss descent over %d steps)", suggestion, steps)
    return float(suggestion)

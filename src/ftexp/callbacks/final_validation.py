"""Validate when `trainer.max_steps` ends training mid-epoch.

Lightning validates at the end of an epoch (or every val_check_interval) and when something asks
the trainer to stop (early stopping, its Timer for max_time), but a run that reaches max_steps
before its epoch ends just stops: no validation, so no best checkpoint, nothing to export and
no metric for a sweep. Asking the trainer to stop at that step takes Lightning's own path for
a requested stop, which validates first (and ModelCheckpoint then saves).
"""

from __future__ import annotations

from typing import Any

import lightning as L


class ValidateAtMaxSteps(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True

"""Periodic full-state checkpoints (`checkpoints/last.ckpt`) that `resume=<run dir>` continues
from: model, optimizer, scheduler, loop counters, the training loader's position (the DataModule's
state) and the random number generators (here, since Lightning saves none of them).

Not Lightning's ModelCheckpoint(every_n_train_steps=…, train_time_interval=…): its triggers are the
same, but it writes the new file over the old one's name through the strategy, keeps no previous
generation to fall back on when the newest is cut short by a kill, and saves no RNG states — so a
resumed run would not be bit-identical (tests/test_resume.py pins both)."""

from __future__ import annotations

import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from ftexp.runs import atomic
from ftexp.runs.checkpoints import LAST, NEWEST, PREVIOUS

log = logging.getLogger(__name__)



def _move(source: Path, target: Path) -> None:
    if target.is_dir():  # sharded checkpoints are folders
        shutil.rmtree(target)
    atomic.replace(source, target)  # renamed, and the rename made durable


class ResumeCheckpoint(L.Callback):
    """Save the whole training state after an optimizer step every `every_n_steps` steps and/or
    every `every_minutes` minutes, keeping the previous save as a fallback."""

    def __init__(self, directory: Path, every_n_steps: int | None, every_minutes: float | None):
        self.directory = Path(directory)
        self.every_n_steps = every_n_steps
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self._last_saved_step = -1
        self._last_saved_at = time.monotonic()
        self.saved_step: int | None = None  # global step of the newest save, for error messages

    @property
    def path(self) -> Path:
        return self.directory / LAST

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_saved_step = trainer.global_step
        self._last_saved_at = time.monotonic()
        if trainer.ckpt_path:  # resumed: the checkpoint it started from is the newest save
            self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_saved_step:
            return  # still inside an accumulation window (or already saved at this step)
        by_steps = self.every_n_steps is not None and step % self.every_n_steps == 0
        elapsed = time.monotonic() - self._last_saved_at
        by_time = self.every_seconds is not None and elapsed >= self.every_seconds
        # Every rank must decide alike (sharded strategies save collectively): rank zero's clock rules.
        if trainer.world_size > 1:
            by_time = bool(trainer.strategy.broadcast(by_time))
        if by_steps or by_time:
            self.save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        """A run told to stop (SIGTERM: `kill`, the web UI's stop button, a scheduler's notice)
        saves where it stands. Lightning raises SIGTERMException only between batches, after the
        batch's callbacks, so the state is whole there unless the batch was inside an
        accumulation window; then the previous save stays the one to resume from."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException) or trainer.global_step == self._last_saved_step:
            return
        batches = trainer.fit_loop.epoch_loop.batch_progress
        if batches.current.ready % trainer.accumulate_grad_batches == 0 or batches.is_last_batch:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        # Written completely under its own name first (the checkpoint IO writes atomically), then
        # rotated in: at every moment one complete save exists, under one of the three names.
        newest = self.directory / NEWEST
        trainer.save_checkpoint(newest)
        if trainer.is_global_zero:
            if self.path.exists():
                _move(self.path, self.directory / PREVIOUS)
            _move(newest, self.path)
        self._last_saved_step, self._last_saved_at = trainer.global_step, time.monotonic()
        self.saved_step = trainer.global_step

    # Lightning stores a callback's state_dict in each checkpoint and hands it back on resume,
    # after the model is built, so the generators continue exactly where the save left them.
    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                                 "python_version": random.getstate()[0],
                                 "python_gauss": random.getstate()[2],
                                 "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)),
                                           *numpy_state[2:]]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        torch.set_rng_state(state["torch"])
        random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

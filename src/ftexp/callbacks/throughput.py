"""Throughput and memory for every run: samples/s, non-padding tokens/s, seconds per training epoch
(validation excluded, so epoch times compare across runs with different eval settings), peak memory
and the optimizer's state size at the end of training.
Samples are samples and tokens are real tokens with or without packing (data.packing=true puts
several samples in a row and pads rows without an attention mask).

Counts are per process: under DDP every figure is per rank (samples/s per rank, not global).

Not Lightning's ThroughputMonitor: it needs a `batch_size_fn` / `length_fn` per batch anyway, logs
through the loggers rather than returning a summary, syncs across ranks every step (a host sync
per step on GPU), has no epoch timing without validation, and measures no peak memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors an optimizer keeps for its parameters: moments, momentum buffers, step
    counters (objects such as GaLore's projectors are left out). BAdam keeps its state in the
    optimizer it wraps."""
    inner = getattr(optimizer, "base_optimizer", optimizer)
    return sum(v.numel() * v.element_size() for state in inner.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def batch_samples(batch: Mapping[str, Any]) -> torch.Tensor | int:
    """Samples in the batch: the ones packed into its rows when it says so (`row_samples`, see
    data/packing.py), else its rows."""
    if "row_samples" in batch:
        return batch["row_samples"].sum()
    if "labels" in batch:
        return len(batch["labels"])
    if "input_ids" in batch:
        return batch["input_ids"].size(0)
    return next(v for v in batch.values() if isinstance(v, torch.Tensor)).size(0)


def batch_tokens(batch: Mapping[str, Any]) -> torch.Tensor | int | None:
    """Non-padding tokens, or None for batches without tokens (precomputed embeddings). Packed
    rows have no attention mask; their batches say how many tokens each row holds (`row_tokens`)."""
    if "row_tokens" in batch:
        return batch["row_tokens"].sum()
    if "attention_mask" in batch:
        return batch["attention_mask"].sum()
    if "input_ids" in batch:
        return batch["input_ids"].numel()
    return None


class ThroughputMonitor(L.Callback):
    def __init__(self) -> None:
        self.samples = 0
        self.epoch_seconds: list[float] = []
        self.peak_memory_bytes: int | None = None
        self.optimizer_state_bytes: int | None = None
        self.peak_memory_kind = "cpu_max_rss"
        # Token counts stay on the device until an epoch closes: `.item()` every step would force a
        # host sync and slow the very training we are measuring.
        self._tokens: torch.Tensor | int | None = None
        self._device = torch.device("cpu")
        self._epoch_open = False
        self._running_since: float | None = None  # None while paused (validation) or outside epochs
        self._epoch_elapsed = 0.0
        self._epoch_samples: torch.Tensor | int = 0
        self._epoch_tokens: torch.Tensor | int | None = None

    @property
    def tokens(self) -> int | None:
        return None if self._tokens is None else int(self._tokens)

    def _now(self) -> float:
        # Without a sync, CUDA kernels still queued would be billed to whatever comes next.
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._device = trainer.strategy.root_device
        if self._device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self._device)
            self.peak_memory_kind = "cuda_allocated"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_open = True
        self._epoch_elapsed, self._epoch_samples, self._epoch_tokens = 0.0, 0, None
        self._running_since = self._now()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._epoch_samples = self._epoch_samples + batch_samples(batch)
        tokens = batch_tokens(batch)
        if tokens is not None:
            self._epoch_tokens = tokens if self._epoch_tokens is None else self._epoch_tokens + tokens

    # Validation pauses the epoch clock. Lightning 2.x runs end-of-epoch validation before
    # on_train_epoch_end; if an epoch ends while validation is still running (other orders), the
    # clock is already paused and the rest of that validation falls outside any epoch.
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._running_since is not None:
            self._epoch_elapsed += self._now() - self._running_since
            self._running_since = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_open:  # sanity-check validation runs before any epoch opens
            self._running_since = self._now()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds, samples, tokens = self._close_epoch()
        if seconds > 0:
            pl_module.log("perf/samples_per_second", samples / seconds)
            if tokens is not None:
                pl_module.log("perf/tokens_per_second", tokens / seconds)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A fit stopped mid-epoch may not reach on_train_epoch_end; its partial epoch still counts.
        if self._epoch_open:
            self._close_epoch()
        self.peak_memory_bytes = self._peak_memory_bytes()
        optimizers = getattr(trainer, "optimizers", None)  # none when the hooks are driven alone
        if optimizers:
            self.optimizer_state_bytes = optimizer_state_bytes(optimizers[0])

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, err: BaseException) -> None:
        if self._epoch_open:
            self._close_epoch()

    def _close_epoch(self) -> tuple[float, int, int | None]:
        if self._running_since is not None:
            self._epoch_elapsed += self._now() - self._running_since
        self._epoch_open, self._running_since = False, None
        tokens = None if self._epoch_tokens is None else int(self._epoch_tokens)
        samples = int(self._epoch_samples)
        self.epoch_seconds.append(self._epoch_elapsed)
        self.samples += samples
        if tokens is not None:
            self._tokens = tokens if self._tokens is None else self._tokens + tokens
        return self._epoch_elapsed, samples, tokens

    def _peak_memory_bytes(self) -> int:
        if self._device.type == "cuda":
            return torch.cuda.max_memory_allocated(self._device)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux

    def summary(self) -> dict[str, float | int | str]:
        peak = self.peak_memory_bytes if self.peak_memory_bytes is not None else self._peak_memory_bytes()
        out: dict[str, float | int | str] = {}
        seconds = sum(self.epoch_seconds)
        if seconds > 0:
            out["train_samples_per_second"] = round(self.samples / seconds, 2)
            if self.tokens is not None:
                out["train_tokens_per_second"] = round(self.tokens / seconds, 2)
        if self.epoch_seconds:
            out["train_seconds_per_epoch"] = round(seconds / len(self.epoch_seconds), 4)
        out["train_epochs_timed"] = len(self.epoch_seconds)
        out["peak_memory_gib"] = round(peak / 2**30, 3)
        out["peak_memory_kind"] = self.peak_memory_kind
        if self.optimizer_state_bytes is not None:
            out["optimizer_state_mib"] = round(self.optimizer_state_bytes / 2**20, 3)
        return out

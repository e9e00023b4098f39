"""ThroughputMonitor on real Lightning fits: it counts samples and non-padding tokens, keeps validation
out of epoch times, still times a fit cut short by max_steps, and reports peak memory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ftexp.callbacks import throughput
from ftexp.callbacks.throughput import ThroughputMonitor

SEQ_LEN = 8
REAL_TOKENS = [3, 5, 8]  # per row, repeating: known padding
ROWS = 12
BATCH = 3


def token_rows(n: int = ROWS) -> list[dict[str, torch.Tensor]]:
    rows = []
    for i in range(n):
        mask = torch.zeros(SEQ_LEN, dtype=torch.long)
        mask[: REAL_TOKENS[i % len(REAL_TOKENS)]] = 1
        rows.append({"input_ids": torch.randint(1, 20, (SEQ_LEN,)) * mask, "attention_mask": mask,
                     "labels": torch.tensor(i % 2)})
    return rows


def embedding_rows(n: int = ROWS) -> list[dict[str, torch.Tensor]]:
    return [{"embeddings": torch.randn(4), "labels": torch.tensor(i % 2)} for i in range(n)]


class TinyModule(L.LightningModule):
    def __init__(self, val_sleep: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(20, 4)
        self.head = nn.Linear(4, 2)
        self.val_sleep = val_sleep

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "embeddings" in batch:
            return self.head(batch["embeddings"])
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (self.embed(batch["input_ids"]) * mask).sum(1) / mask.sum(1)
        return self.head(pooled)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch), batch["labels"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        time.sleep(self.val_sleep)  # stands in for slow evaluation that must not count as training

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(rows: list[dict[str, torch.Tensor]], val_sleep: float = 0.0, **trainer_kwargs: Any
        ) -> tuple[ThroughputMonitor, L.Trainer]:
    monitor = ThroughputMonitor()
    trainer_kwargs = {"max_epochs": 2, **trainer_kwargs}
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[monitor], **trainer_kwargs)
    loader = DataLoader(rows, batch_size=BATCH)
    val_loader = DataLoader(rows[: 2 * BATCH], batch_size=BATCH)  # two val batches
    trainer.fit(TinyModule(val_sleep), loader, val_loader)
    return monitor, trainer


def test_counts_samples_and_non_padding_tokens():
    rows = token_rows()
    monitor, trainer = fit(rows)
    real_tokens = sum(int(r["attention_mask"].sum()) for r in rows)
    assert real_tokens < ROWS * SEQ_LEN  # the padding is real, so counting it would be caught
    assert monitor.samples == 2 * ROWS
    assert monitor.tokens == 2 * real_tokens

    summary = monitor.summary()
    assert summary["train_epochs_timed"] == 2
    sps, tps = summary["train_samples_per_second"], summary["train_tokens_per_second"]
    # The summary rounds rates to 2 decimals; allow exactly that rounding on top of 1e-6.
    tolerance = 1e-6 + 0.005 / sps + 0.005 / tps
    assert tps / sps == pytest.approx(monitor.tokens / monitor.samples, rel=tolerance)
    assert {"perf/samples_per_second", "perf/tokens_per_second"} <= set(trainer.callback_metrics)


@pytest.mark.parametrize("val_check_interval", [1.0, 0.5])  # end-of-epoch only, and also mid-epoch
def test_validation_time_is_excluded_from_epoch_time(val_check_interval: float):
    sleep = 0.3  # per val batch; two val batches, so 0.6 s per validation run
    slow, _ = fit(token_rows(), val_sleep=sleep, val_check_interval=val_check_interval)
    fast, _ = fit(token_rows(), val_sleep=0.0, val_check_interval=val_check_interval)
    one_validation = 2 * sleep
    slow_epoch = slow.summary()["train_seconds_per_epoch"]
    fast_epoch = fast.summary()["train_seconds_per_epoch"]
    # Half of one validation run: any single validation left in the clock breaks this, while the
    # ~0.1 s of scheduling noise seen on a loaded CI box does not.
    assert 0 < slow_epoch < 0.5 * one_validation, slow.epoch_seconds
    # Similar to the run without the sleep: the exclusion works, not merely that training is fast.
    assert abs(slow_epoch - fast_epoch) < 0.5 * one_validation, (slow.epoch_seconds, fast.epoch_seconds)


def test_fit_stopped_mid_epoch_by_max_steps_is_still_timed():
    monitor, _ = fit(token_rows(), max_epochs=5, max_steps=2)
    summary = monitor.summary()
    assert monitor.samples == 2 * BATCH
    assert summary["train_epochs_timed"] >= 1
    assert summary["train_seconds_per_epoch"] > 0


def test_batches_without_tokens_report_samples_only():
    monitor, trainer = fit(embedding_rows())
    summary = monitor.summary()
    assert monitor.tokens is None
    assert "train_tokens_per_second" not in summary
    assert summary["train_samples_per_second"] > 0 and monitor.samples == 2 * ROWS
    assert "perf/tokens_per_second" not in trainer.callback_metrics


def test_peak_memory_is_cpu_rss_on_cpu():
    monitor, _ = fit(token_rows(), max_epochs=1)
    summary = monitor.summary()
    assert summary["peak_memory_kind"] == "cpu_max_rss"
    assert isinstance(summary["peak_memory_gib"], float) and summary["peak_memory_gib"] > 0


class _Stub:
    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.mark.parametrize("order, expected", [
    # Lightning 2.x: end-of-epoch validation finishes before on_train_epoch_end.
    (["epoch_start", "val_start", "val_end", "epoch_end"], 2),
    # The other order: the epoch ends while validation is still running.
    (["epoch_start", "val_start", "epoch_end", "val_end"], 1),
])
def test_hook_order_with_a_fake_clock(monkeypatch: pytest.MonkeyPatch, order: list[str], expected: float):
    # Each hook reads the clock once; ticks are 1 s apart, so training spans are whole seconds:
    # epoch_start@0, val_start@1 -> 1 s trained, then in the first order val_end@2, epoch_end@3 -> 1 s more.
    ticks = iter(range(100))
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: float(next(ticks)))
    monitor, stub = ThroughputMonitor(), _Stub()
    hooks = {"epoch_start": monitor.on_train_epoch_start, "epoch_end": monitor.on_train_epoch_end,
             "val_start": monitor.on_validation_start, "val_end": monitor.on_validation_end}
    for name in order:
        hooks[name](None, stub)  # type: ignore[arg-type]
    monitor.on_train_end(None, stub)  # type: ignore[arg-type]
    assert monitor.epoch_seconds == [expected]


class LMModule(L.LightningModule):
    """Stands in for a causal LM: reads only input_ids, so packed and unpacked batches both train."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30522, 2)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.embed(batch["input_ids"]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def causal_lm_data(minilm_tokenizer: Any, packing: bool, tmp_path: Path) -> Any:
    from omegaconf import OmegaConf

    from conftest import compose_config
    from ftexp.data.causal_lm import CausalLMDataModule

    cfg = compose_config(["task=causal_lm", "data=code_alpaca", "model=tiny_llama", "data.max_length=256",
                          "data.max_train_samples=60", "data.batch_size=4", f"data.packing={packing}"],
                         output_dir=tmp_path)
    datamodule = CausalLMDataModule(OmegaConf.to_object(cfg.data), minilm_tokenizer)
    datamodule.setup()
    return datamodule


def test_packed_and_unpacked_runs_count_the_same_samples_and_real_tokens(minilm_tokenizer: Any,
                                                                       tmp_path: Path):
    """data.packing=true puts several samples in a row and pads rows with no attention mask: the
    counts must still be samples and non-padding tokens, equal to an unpacked run's on the same data."""
    unpacked_data = causal_lm_data(minilm_tokenizer, False, tmp_path)
    samples = unpacked_data.datasets["train"].rows  # one encoded sample per row
    true_samples, true_tokens = len(samples), sum(len(s["input_ids"]) for s in samples)
    counted = {}
    for packing in (False, True):
        datamodule = unpacked_data if not packing else causal_lm_data(minilm_tokenizer, True, tmp_path)
        monitor = ThroughputMonitor()
        trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            callbacks=[monitor])
        trainer.fit(LMModule(), datamodule=datamodule)
        counted[packing] = (monitor.samples, monitor.tokens, datamodule.num_train_samples)
        if packing:  # the traps are there: rows are not samples, and padding is not in any mask
            rows = len(datamodule.datasets["train"])
            assert rows < true_samples
            padded = sum(b["input_ids"].numel() for b in datamodule.train_dataloader())
            assert padded > true_tokens
            assert "attention_mask" not in next(iter(datamodule.train_dataloader()))
    assert counted[False] == counted[True] == (2 * true_samples, 2 * true_tokens, true_samples)

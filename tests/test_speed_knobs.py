"""Speed settings that must not change what is trained: length-grouped batches
(`data.group_by_length`) and the fused AdamW step on CPU."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from ftexp.builders.optim import allow_clipping_without_scaler
from ftexp.data.packing import pad_batch
from ftexp.data.rows import LoaderPosition, Rows, rows_loader

# -- data.group_by_length ---------------------------------------------------------------------------


def _rows(n: int = 640, seed: int = 0) -> Rows:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 65, (n,), generator=g).tolist()
    # The first id is the row's number, so every served row can be traced back.
    return Rows([{"input_ids": [i] + [7] * (k - 1), "labels": [i] + [7] * (k - 1)}
                 for i, k in enumerate(lengths)])


def _loader(rows: Rows, seed: int = 42, grouped: bool = True, position: LoaderPosition | None = None):
    lengths = [len(r["input_ids"]) for r in rows.rows] if grouped else None
    return rows_loader(rows, 16, True, lambda f: pad_batch(f, 0), 0, seed, position=position,
                       lengths=lengths)


def _epoch(loader) -> list[list[int]]:
    """Each batch as the row numbers it holds, in order."""
    return [b["input_ids"][:, 0].tolist() for b in loader]


def _spread(rows: Rows, batches: list[list[int]]) -> float:
    """Mean over batches of (longest - shortest) row: what padding costs."""
    lengths = [len(r["input_ids"]) for r in rows.rows]
    return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)


def test_grouped_batches_are_length_homogeneous_and_cover_every_row_once():
    rows = _rows()
    grouped, plain = _epoch(_loader(rows)), _epoch(_loader(rows, grouped=False))
    assert sorted(i for b in grouped for i in b) == list(range(len(rows)))
    # Random batches of lengths 2..64 spread over ~55 tokens; grouped ones over a few.
    assert _spread(rows, plain) > 40
    assert _spread(rows, grouped) < 10


def test_grouped_order_is_the_seeds_and_moves_on_each_epoch():
    rows = _rows()
    loader = _loader(rows)
    first, second = _epoch(loader), _epoch(loader)
    assert first == _epoch(_loader(rows))  # same seed, same batches
    assert first != second  # a new shuffle every epoch
    assert first != _epoch(_loader(rows, seed=7))


def test_a_grouped_epoch_resumed_mid_way_serves_the_batches_left():
    rows = _rows()
    position = LoaderPosition()
    loader = _loader(rows, position=position)
    _epoch(loader)
    # What a checkpoint taken in epoch 2 keeps (RowsDataModule.state_dict): the generator's state
    # when the epoch began and the batches trained; here 5.
    epoch_start = position.generator.get_state()
    expected = _epoch(loader)
    resumed = LoaderPosition()
    resumed.resume = (epoch_start, 5)
    assert _epoch(_loader(rows, position=resumed)) == expected[5:]


def test_group_by_length_is_refused_with_cached_embeddings():
    from conftest import compose_config
    from ftexp.runs.errors import ConfigError

    with pytest.raises(ConfigError, match="group_by_length"):
        compose_config(["adapter=frozen", "data.cache_encoder_embeddings=true",
                        "data.group_by_length=true"], resolve=False)


# -- fused AdamW on CPU -------------------------------------------------------------------------


def _trained(fused: bool) -> nn.Linear:
    torch.manual_seed(0)
    model = nn.Linear(64, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
    x, y = torch.randn(32, 64), torch.randn(32, 8)
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model


def test_fused_adamw_on_cpu_trains_like_the_per_tensor_loop():
    fused, loop = _trained(True), _trained(False)
    for a, b in zip(fused.parameters(), loop.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_mixed_clips_with_a_fused_adamw():
    """Pins the flag Lightning reads: torch marks fused AdamW as unscaling in its step, and
    Lightning's MixedPrecision refuses to clip such an optimizer; cleared under bf16-mixed (no
    gradient scaler), clipping runs, while fp16 (which has a scaler) keeps the refusal."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    model = nn.Linear(4, 2)
    model.weight.grad = torch.full_like(model.weight, 10.0)
    plugin = MixedPrecision("bf16-mixed", "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    with pytest.raises(RuntimeError, match="fused"):
        plugin.clip_gradients(optimizer, clip_val=1.0)
    allow_clipping_without_scaler(optimizer, "16-mixed")
    with pytest.raises(RuntimeError, match="fused"):
        plugin.clip_gradients(optimizer, clip_val=1.0)
    allow_clipping_without_scaler(optimizer, "bf16-mixed")
    plugin.clip_gradients(optimizer, clip_val=1.0)
    assert float(model.weight.grad.norm()) == pytest.approx(1.0, rel=1e-4)


# -- clipping by the norm NonFiniteGuard measured ---------------------------------------------------


def _tiny_run(tmp_path, rows: int, *extra: str) -> tuple[dict, list[float]]:
    """A short in-process run of the tiny BERT on `rows` toy rows, one epoch, no validation or
    checkpoint: its metrics and its per-step training losses."""
    from conftest import compose_config, sentiment_rows, tiny_overrides
    from ftexp.train import train

    tmp_path.mkdir(parents=True)
    data = tmp_path / "toy.csv"
    sentiment_rows(rows, seed=2).to_csv(data, index=False)
    cfg = compose_config(tiny_overrides(data, "trainer.max_epochs=1", "trainer.limit_val_batches=0",
                                        "callbacks.checkpoint=false", "logger=csv",
                                        "trainer.log_every_n_steps=1", *extra), output_dir=tmp_path / "run")
    metrics = train(cfg)
    losses = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")["train/loss_step"].dropna().tolist()
    return metrics, losses


def _norm_passes_per_step(tmp_path, monkeypatch, *extra: str) -> tuple[int, list[float]]:
    """torch._foreach_norm calls (one per pass over the gradients) per optimizer step of a short
    in-process run, and its training losses."""
    calls = []
    original = torch._foreach_norm
    monkeypatch.setattr(torch, "_foreach_norm", lambda *a, **k: calls.append(1) or original(*a, **k))
    metrics, losses = _tiny_run(tmp_path, 64, *extra)
    return len(calls) / metrics["global_steps"], losses


def test_clipping_reuses_the_guards_norm_and_trains_as_clip_grad_norm_does(tmp_path, monkeypatch):
    from ftexp.tasks.base import FinetuneTask

    passes, losses = _norm_passes_per_step(tmp_path / "a", monkeypatch, "trainer.gradient_clip_val=0.5")
    assert passes == 1  # the guard's check; clipping used to read every gradient again
    # Lightning's own clipping (clip_grad_norm_), on the same run: the same losses, bit for bit.
    monkeypatch.setattr(FinetuneTask, "configure_gradient_clipping",
                        lambda self, *a, **k: super(FinetuneTask, self).configure_gradient_clipping(*a, **k))
    passes_before, losses_before = _norm_passes_per_step(tmp_path / "b", monkeypatch,
                                                         "trainer.gradient_clip_val=0.5")
    assert passes_before == 2
    assert losses == losses_before and len(losses) >= 4


# -- gradients freed after the optimizer step -----------------------------------------------------


def _grads_held_at_batch_start(tmp_path, monkeypatch, *extra: str) -> tuple[list[bool], list[float]]:
    """For each training batch of a short in-process run, whether any weight still held a
    gradient when the batch started (before its forward), and the run's training losses."""
    from ftexp.tasks.base import FinetuneTask

    held = []
    monkeypatch.setattr(FinetuneTask, "on_train_batch_start", lambda self, batch, batch_idx: held.append(
        any(p.grad is not None for p in self.parameters())), raising=False)
    _, losses = _tiny_run(tmp_path, 96, *extra)
    return held, losses


def test_gradients_are_freed_after_each_step_and_accumulation_still_sums(tmp_path, monkeypatch):
    from lightning.pytorch import LightningModule

    from ftexp.tasks.base import FinetuneTask

    # No forward runs beside the last step's gradients (the memory peak the Trainer avoids).
    held, losses = _grads_held_at_batch_start(tmp_path / "a", monkeypatch)
    assert len(held) == 6 and not any(held)
    # Accumulating over two batches, the second batch's forward still has the first's gradients.
    held_acc, losses_acc = _grads_held_at_batch_start(tmp_path / "b", monkeypatch,
                                                      "trainer.accumulate_grad_batches=2")
    assert held_acc == [False, True] * 3
    # Lightning's order (zero_grad inside the next closure): the same training, bit for bit.
    monkeypatch.setattr(FinetuneTask, "optimizer_step",
                        lambda self, *a: LightningModule.optimizer_step(self, *a))
    held_before, losses_before = _grads_held_at_batch_start(tmp_path / "c", monkeypatch)
    assert held_before == [False] + [True] * 5
    assert losses == losses_before and len(losses) == 6
    assert losses_acc != losses

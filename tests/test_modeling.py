"""Pooling ignores padding, and learning-rate schedules follow their formulas."""

from __future__ import annotations

import pytest
import torch

from ftexp.builders.optim import parameter_groups
from ftexp.builders.schedulers import build_scheduler
from ftexp.modeling import pool


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert pool(hidden, torch.tensor([[1, 1, 0]]), "mean").item() == 2.0


@pytest.mark.parametrize("mask", [[1, 1, 0, 0], [0, 0, 1, 1]], ids=["right-padded", "left-padded"])
def test_last_pooling_takes_the_last_real_token(mask):
    hidden = torch.arange(4.0).view(1, 4, 1)
    expected = 1.0 if mask[-1] == 0 else 3.0
    assert pool(hidden, torch.tensor([mask]), "last").item() == expected


def test_cls_pooling_takes_the_first_token():
    hidden = torch.arange(4.0).view(1, 4, 1)
    assert pool(hidden, torch.tensor([[1, 1, 1, 0]]), "cls").item() == 0.0


def _lrs(name: str, warmup_fraction: float, total: int, base: float = 1.0) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = build_scheduler(optimizer, name, warmup_fraction, total)
    values = []
    for _ in range(total):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_linear_schedule_warms_up_then_decays_to_zero():
    lrs = _lrs("linear", warmup_fraction=0.2, total=10)  # 2 warmup steps
    # warmup: step/warmup; then (total - step) / (total - warmup)
    expected = [0.0, 0.5] + [(10 - s) / 8 for s in range(2, 10)]
    assert lrs == pytest.approx(expected)


def test_constant_schedule_warms_up_then_stays_flat():
    assert _lrs("constant", warmup_fraction=0.25, total=8) == pytest.approx([0.0, 0.5] + [1.0] * 6)
    assert _lrs("constant", warmup_fraction=0.0, total=4) == pytest.approx([1.0] * 4)


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0

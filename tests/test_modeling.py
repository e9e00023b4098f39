"""Pooling ignores padding (schedules and optimizers: tests/test_optim.py)."""

from __future__ import annotations

import pytest
import torch

from ftexp.tasks.pooled_model import pool


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


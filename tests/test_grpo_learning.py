"""Acceptance for GRPO on a learnable toy reward (issue 16): `+experiment=tiny_grpo_toy` — the
tiny random-init Llama, fully fine-tuned, rewarded by the share of its completion's words that are
numbers (ftexp.tasks.rewards.token_share, maximum 1.0) — closes at least half the gap between its starting
validation reward and 1.0 within the experiment's own smoke-sized run, and csv/metrics.csv shows
the climb. Slow: ~15 s of CPU on 2 free cores (minutes on a busy machine)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import run_in_process

pytestmark = pytest.mark.slow

MAXIMUM = 1.0  # token_share's best score: every word a number

# GRPO's relatives on the same toy reach what it reaches (issue 28): RLOO's leave-one-out
# baseline (unscaled), REINFORCE++'s batch baseline, GSPO's sequence-level ratio (with
# num_iterations=2, where its ratio differs from GRPO's: on-policy the two are the same).
VARIANTS = {"grpo": [], "rloo": ["task.advantage=rloo"], "reinforce_pp": ["task.advantage=reinforce_pp"],
            "gspo": ["task.importance_sampling=sequence", "task.num_iterations=2"]}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_toy_experiment_closes_half_the_gap_to_the_maximum_reward(variant, tmp_path, monkeypatch, capsys,
                                                                       margin):
    run = tmp_path / "run"
    code, err = run_in_process(["+experiment=tiny_grpo_toy", "trainer.enable_progress_bar=false",
                                f"paths.output_dir={run}", *VARIANTS[variant]], monkeypatch, capsys)
    assert code == 0, err[-2000:]
    history = pd.read_csv(run / "csv" / "metrics.csv")
    curve = history[["step", "val/reward"]].dropna()
    rewards = curve["val/reward"].tolist()
    # Validation after every step; the first step runs at learning rate 0 (one warmup step), so the
    # first point scores the untrained weights.
    assert len(rewards) >= 10, curve
    first, last, best = rewards[0], rewards[-1], max(rewards)
    # There is a gap to close: random init rarely writes numbers.
    margin.below("first val/reward / maximum", first / MAXIMUM, 0.5, curve.to_string())
    gap = MAXIMUM - first
    margin.at_least("share of the gap closed, last point", (last - first) / gap, 0.5, curve.to_string())
    margin.at_least("share of the gap closed, best point", (best - first) / gap, 0.5, curve.to_string())
    # The climb, not one lucky validation: the last few points all stand well above the start,
    # and sampled training rewards rise too.
    margin.at_least("share of the gap closed, worst of the last 3 points", (min(rewards[-3:]) - first) / gap,
                    0.25, curve.to_string())
    train = history["train/reward"].dropna().tolist()
    # Sampled at temperature 1, the training rewards rose by 0.20 to 0.46 over 5 seeds
    # (scripts/test_margins.py; RLOO, REINFORCE++ and GSPO 0.27-0.49 over 3 seeds, one under
    # ATEN_CPU_CAPABILITY=avx2, every one at val/reward 1.0 by the end): noisier than the
    # greedy validation points above, which carry the claim that it learns; this one says the
    # sampling policy moved with them.
    rise = sum(train[-5:]) / 5 - sum(train[:5]) / 5
    margin.above("train/reward rise, mean of last 5 steps − first 5", rise, 0.1, train)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val/reward"] == pytest.approx(last) and "val/rewards/numbers" in metrics
    assert "val/rewards/correct" not in metrics  # the toy reward is the only one

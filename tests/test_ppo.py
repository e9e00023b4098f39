"""task=ppo: PPO's arithmetic worked by hand (the KL-penalised per-token reward, GAE and its
limits, whitening, the clipped policy and value losses with their clip fractions and gradients,
explained variance); a tiny run end to end (a rollout's advantages are GAE of its own rewards and
values, the metrics TRL names, the value head trained, saved and left out of the export); PPO
that learns on the token-share toy (slow); one-line errors for bad settings."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from conftest import assert_one_line, build_task, compose_config, run_in_process
from ftexp.tasks.ppo_losses import (
    explained_variance,
    gae,
    kl_penalised_rewards,
    ppo_loss,
    whiten,
)

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)


def _gae_by_hand(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """One row's advantages over its real tokens: A_t = sum_k (gamma lam)^k delta_{t+k}."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]


def test_the_reward_is_minus_the_kl_penalty_per_token_plus_the_score_at_the_last_token():
    logps = torch.tensor([[-1.0, -2.0, -0.5, -1.5], [-0.2, -0.4, -9.0, -9.0]])
    reference = torch.tensor([[-1.5, -1.0, -0.5, -2.0], [-0.1, -0.8, -1.0, -1.0]])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0, -1.0]), logps, reference, MASK, kl_coef=0.1)
    expected_kl = [[0.5, -1.0, 0.0, 0.5], [-0.1, 0.4, 0.0, 0.0]]  # padding contributes nothing
    torch.testing.assert_close(kl, torch.tensor(expected_kl))
    expected = [[-0.05, 0.1, 0.0, -0.05 + 2.0], [0.01, -0.04 - 1.0, 0.0, 0.0]]
    torch.testing.assert_close(rewards, torch.tensor(expected))
    no_reference, zero_kl = kl_penalised_rewards(torch.tensor([2.0, -1.0]), logps, None, MASK, kl_coef=0.0)
    torch.testing.assert_close(no_reference, torch.tensor([[0, 0, 0, 2.0], [0, -1.0, 0, 0]]))
    assert not zero_kl.any()


@pytest.mark.parametrize("gamma, lam", [(0.9, 0.8), (1.0, 1.0), (1.0, 0.0), (0.5, 0.95)])
def test_gae_equals_the_sum_of_discounted_td_errors_worked_by_hand(gamma, lam):
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0], [0.5, 2.0, 7.0, 7.0]])  # row 2: padding after 2
    values = torch.tensor([[0.4, 0.3, -0.1, 0.2], [0.6, -0.5, 3.0, 3.0]])
    advantages, returns = gae(rewards, values, MASK, gamma, lam)
    for row, n in ((0, 4), (1, 2)):
        by_hand = _gae_by_hand(rewards[row, :n].tolist(), values[row, :n].tolist(), gamma, lam)
        torch.testing.assert_close(advantages[row, :n], torch.tensor(by_hand), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(returns[row, :n], torch.tensor(by_hand) + values[row, :n],
                                   rtol=1e-6, atol=1e-7)
    assert not advantages[1, 2:].any() and not returns[1, 2:].any()
    if gamma == lam == 1.0:  # the Monte-Carlo return: the rewards to go
        torch.testing.assert_close(returns[0], rewards[0].flip(0).cumsum(0).flip(0))
    if lam == 0.0:  # one-step TD
        torch.testing.assert_close(advantages[0, :3], rewards[0, :3] + gamma * values[0, 1:] - values[0, :3])


def test_whitening_is_a_masked_standardisation_with_bessel_correction():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 99.0, 99.0]])
    out = whiten(values, MASK)
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0])
    expected = (real - real.mean()) / torch.sqrt(real.var(unbiased=True) + 1e-8)
    torch.testing.assert_close(out[MASK.bool()], expected)
    assert not out[~MASK.bool()].any()
    torch.testing.assert_close(whiten(values, MASK, shift_mean=False)[MASK.bool()], expected + real.mean())


def test_the_clipped_losses_equal_the_formulas_and_clipping_stops_the_gradient():
    old = torch.zeros(2, 4)
    # ratios e^0.5 (over 1.2: clipped where A > 0), e^-0.5 (under 0.8: clipped where A < 0), 1, e^0.1
    logps = torch.tensor([[0.5, -0.5, 0.0, 0.1], [0.5, -0.5, 0.0, 0.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, -1.0, 2.0, -0.5], [-1.0, 1.0, 0.0, 0.0]])
    old_values = torch.tensor([[0.0, 1.0, 0.5, 0.0], [0.2, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.9, 0.5, -0.1], [0.2, 0.3, 0.0, 0.0]], requires_grad=True)
    returns = torch.tensor([[1.0, 0.0, 0.5, 0.0], [1.0, 1.0, 0.0, 0.0]])
    clip, clip_v, vf_coef = 0.2, 0.2, 0.1
    result = ppo_loss(logps, old, values, old_values, advantages, returns, MASK, clip, clip_v, vf_coef)

    policy, value, clipped_p, clipped_v, real = [], [], 0, 0, MASK.bool()
    for i, j in real.nonzero().tolist():
        r, a = math.exp(logps[i, j].item()), advantages[i, j].item()
        unclipped, clipped = -a * r, -a * min(max(r, 1 - clip), 1 + clip)
        policy.append(max(unclipped, clipped))
        clipped_p += clipped > unclipped
        v, v_old, ret = values[i, j].item(), old_values[i, j].item(), returns[i, j].item()
        v_clipped = v_old + min(max(v - v_old, -clip_v), clip_v)
        value.append(0.5 * max((v - ret) ** 2, (v_clipped - ret) ** 2))
        clipped_v += (v_clipped - ret) ** 2 > (v - ret) ** 2
    n = len(policy)
    assert result.policy_loss.item() == pytest.approx(sum(policy) / n, rel=1e-6)
    assert result.value_loss.item() == pytest.approx(sum(value) / n, rel=1e-6)
    assert result.loss.item() == pytest.approx(sum(policy) / n + vf_coef * sum(value) / n, rel=1e-6)
    assert result.policy_clipfrac.item() == pytest.approx(clipped_p / n)
    assert result.value_clipfrac.item() == pytest.approx(clipped_v / n)
    assert clipped_p == 2 and clipped_v >= 1  # both clips engaged by this example
    result.loss.backward()
    # Clipped tokens carry no policy gradient; unclipped ones -A r / n; padding none.
    expected_grad = torch.zeros(2, 4)
    for i, j in real.nonzero().tolist():
        r, a = math.exp(logps[i, j].item()), advantages[i, j].item()
        if not ((a > 0 and r > 1 + clip) or (a < 0 and r < 1 - clip)):
            expected_grad[i, j] = -a * r / n
    torch.testing.assert_close(logps.grad, expected_grad)
    assert not values.grad[~real].any()


def test_explained_variance_is_one_for_the_returns_and_zero_for_their_mean():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]])
    assert explained_variance(returns, returns, MASK).item() == pytest.approx(1.0)
    mean = torch.full_like(returns, returns[MASK.bool()].mean().item())
    assert explained_variance(mean, returns, MASK).item() == pytest.approx(0.0, abs=1e-6)


def _overrides(*extra: str) -> list[str]:
    return ["+experiment=tiny_ppo", "trainer.enable_progress_bar=false", "generation.max_new_tokens=6",
            *extra]


def test_a_rollout_holds_gae_of_its_own_rewards_and_values(tmp_path):
    task, datamodule, _ = build_task(_overrides("task.kl_coef=0.1", "task.gamma=0.9", "task.lam=0.8"),
                                     tmp_path)
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(0)
    drawn = task.sample(batch, task.hparams.task["num_generations"])
    with torch.no_grad():
        rollout = task.rollout(drawn, *task.logps_and_values(drawn)[:2])
    samples, mask = rollout.samples, rollout.samples.completion_mask
    assert len(samples.rewards) == len(batch["prompts"]) * 4  # num_generations=4 in tiny_ppo
    assert not rollout.old_values.any()  # a zero-initialised value head
    assert rollout.reference_logps is not None  # kl_coef > 0: the adapter-disabled network
    rewards, kl = kl_penalised_rewards(samples.rewards, rollout.old_logps, rollout.reference_logps, mask, 0.1)
    advantages, returns = gae(rewards, rollout.old_values, mask, 0.9, 0.8)
    torch.testing.assert_close(rollout.returns, returns)
    torch.testing.assert_close(rollout.advantages, whiten(advantages, mask))
    torch.testing.assert_close(rollout.kl, kl)
    # The policy's no-grad log-probs are those the gradient pass computes (ratio 1 at the first epoch).
    logps, values, _ = task.logps_and_values(samples)
    torch.testing.assert_close(logps, rollout.old_logps, rtol=1e-5, atol=1e-5)


def test_a_ppo_run_logs_trls_metrics_trains_its_value_head_and_exports_the_policy(tmp_path, monkeypatch,
                                                                                  capsys):
    from ftexp.export import export_run
    from ftexp.predict import load_checkpoint

    run = tmp_path / "run"
    code, err = run_in_process(_overrides("trainer.max_steps=4", "trainer.val_check_interval=4",
                                          f"hydra.run.dir={run}"), monkeypatch, capsys)
    assert code == 0, err[-3000:]
    logged = pd.read_csv(run / "csv" / "metrics.csv")
    for name in ("objective/kl", "objective/scores", "objective/non_score_reward", "loss/policy_avg",
                 "loss/value_avg", "policy/clipfrac_avg", "policy/approxkl_avg", "value/clipfrac_avg",
                 "value/explained_variance", "policy/entropy_avg"):
        assert logged[f"train/{name}"].notna().sum() == 4, name
    assert "val/reward" in json.loads((run / "metrics.json").read_text())
    state = load_checkpoint(run / "checkpoints" / "best.ckpt")["state_dict"]
    assert state["value_head.weight"].abs().sum() > 0  # trained away from its zero start
    export = export_run(run, tmp_path / "export", dtype="float32")
    from safetensors.torch import load_file

    assert not any("value_head" in k for k in load_file(export / "model.safetensors"))


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    """A tiny task=reward run on the policy's tokenizer: where a separate critic starts."""
    from ftexp.train import train

    out = tmp_path_factory.mktemp("critic") / "rm"
    train(compose_config(["+experiment=tiny_rm", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
                          "data.max_length=64", "data.max_prompt_length=32"], output_dir=out))
    return out


def test_a_separate_critic_starts_as_the_reward_model_scoring_each_prefix(reward_run, tmp_path):
    """Its value before completion token j is the reward model's score of the sequence up to there,
    as `ftexp.predict` scores a text: pooled at its last token, left padding and all."""
    from ftexp.predict import load_trained

    task, datamodule, _ = build_task(_overrides("task.critic=separate", f"task.critic_from={reward_run}"),
                                     tmp_path)
    assert task.critic is None and task.value_head is None  # built under a Trainer only
    task.critic = task.load_critic()
    torch.manual_seed(0)
    samples = task.sample(next(iter(datamodule.train_dataloader())), 2)
    # One more prompt token: a real one in odd rows, left padding in even rows (prompts here are
    # all of one length).
    odd = (torch.arange(len(samples.input_ids)) % 2).unsqueeze(1)
    samples = samples._replace(input_ids=torch.cat([samples.input_ids[:, :1], samples.input_ids], 1),
                               attention_mask=torch.cat([odd, samples.attention_mask], 1))
    with torch.no_grad():
        values = task.critic_values(samples)
    reward_model = load_trained(reward_run)[0].network
    length = samples.completion_mask.shape[1]
    assert (samples.attention_mask[:, :-length] == 0).any()  # some prompts are left-padded
    for row in range(len(values)):
        real = samples.input_ids[row][samples.attention_mask[row].bool()]
        prompt = int(samples.attention_mask[row, :-length].sum())
        for j in range(int(samples.completion_mask[row].sum())):
            prefix = real[None, :prompt + j]
            with torch.no_grad():
                score = reward_model(prefix, torch.ones_like(prefix)).item()
            assert values[row, j].item() == pytest.approx(score, rel=1e-4, abs=1e-5)


def test_a_separate_critic_trains_resumes_with_the_run_and_stays_out_of_the_export(reward_run, tmp_path,
                                                                                   monkeypatch, capsys):
    import shutil

    from ftexp.export import export_run
    from ftexp.predict import load_checkpoint

    run, rm = tmp_path / "run", tmp_path / "rm"
    shutil.copytree(reward_run, rm)
    code, err = run_in_process(_overrides("trainer.max_steps=2", "trainer.val_check_interval=2",
                                          "task.critic=separate", f"task.critic_from={rm}",
                                          f"hydra.run.dir={run}"), monkeypatch, capsys)
    assert code == 0, err[-3000:]
    logged = pd.read_csv(run / "csv" / "metrics.csv")
    assert logged["train/loss/value_avg"].notna().sum() == 2
    state = load_checkpoint(run / "checkpoints" / "best.ckpt")["state_dict"]
    started = load_checkpoint(rm / "checkpoints" / "best.ckpt")["state_dict"]
    assert not any(k.startswith("value_head") for k in state)
    assert not torch.equal(state["critic.head.weight"], started["network.head.weight"])  # trained
    shutil.rmtree(rm)  # the export needs the policy alone, not the reward run
    from safetensors.torch import load_file

    exported = load_file(export_run(run, tmp_path / "export", dtype="float32") / "model.safetensors")
    assert exported and not any("critic" in k or k.startswith("head") for k in exported)


def test_a_critic_from_a_reward_model_pooled_otherwise_is_refused_in_one_line(tmp_path):
    from ftexp.runs.errors import ConfigError
    from ftexp.train import train

    train(compose_config(["+experiment=tiny_rm", "trainer.max_steps=1", "trainer.enable_progress_bar=false",
                          "data.max_length=64", "data.max_prompt_length=32", "task.pooling=mean"],
                         output_dir=tmp_path / "rm"))
    task, _, _ = build_task(_overrides("task.critic=separate", f"task.critic_from={tmp_path / 'rm'}"),
                            tmp_path / "ppo")
    with pytest.raises(ConfigError, match="a critic needs a value at every token") as info:
        task.load_critic()
    assert "task.pooling=mean" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("override", "message"), [
    ("task.critic=separate", "task.critic=separate needs task.critic_from=<a task=reward run dir>"),
    ("task.critic_from=/x", "task.critic_from=/x is read with task.critic=separate only"),
    ("task.lam=1.5", "task.lam=1.5 must lie in [0, 1]."),
    ("task.cliprange=0", "task.cliprange=0.0 must be > 0."),
    ("task.kl_coef=-1", "task.kl_coef=-1.0 must be >= 0 (0: no reference pass)."),
    ("task.epsilon=0.1", "task.epsilon"),  # a GRPO key: not one of PPO's
])
def test_bad_ppo_settings_are_one_line(override, message, monkeypatch, capsys):
    code, err = run_in_process(_overrides(override, "trainer.max_steps=1"), monkeypatch, capsys)
    assert code == 2
    assert_one_line(err, message)


def test_kl_coef_zero_runs_no_reference_pass(tmp_path):
    cfg = compose_config(_overrides("task.kl_coef=0"), tmp_path)
    from ftexp.config.preference_tasks import reference_source

    assert reference_source(cfg.task, cfg.adapter.method) is None
    assert reference_source(compose_config(_overrides(), tmp_path).task, "lora") == "adapter"


@pytest.mark.slow
def test_ppo_learns_the_token_share_toy(tmp_path, monkeypatch, capsys, margin):
    """+experiment=tiny_ppo: the untrained policy's samples are hardly ever numbers; after 40 PPO
    steps its greedy completions are mostly numbers."""
    run = tmp_path / "run"
    code, err = run_in_process(_overrides(f"hydra.run.dir={run}", "generation.max_new_tokens=8"),
                               monkeypatch, capsys)
    assert code == 0, err[-3000:]
    logged = pd.read_csv(run / "csv" / "metrics.csv")
    first = logged["train/objective/scores"].dropna().tolist()[:2]  # the first rollout's two epochs
    curve = logged["val/reward"].dropna().tolist()
    margin.below("untrained samples' reward", sum(first) / 2, 0.15, first)
    margin.at_least("last val/reward", curve[-1], 0.7, curve)


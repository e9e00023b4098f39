"""PPO's arithmetic (Schulman et al. 2017; the RLHF form of Ziegler et al. 2019 and Ouyang et al.
2022, as TRL's PPOTrainer computes it), as pure functions of (N, L) completion tensors with a
0/1 completion mask:

- `kl_penalised_rewards`: the per-token reward — minus kl_coef times the per-token KL estimate
  log pi_old - log pi_ref, plus the sequence's score at its last real token;
- `gae`: generalised advantage estimation (Schulman et al. 2016) and the returns A + V;
- `whiten`: masked standardisation of the advantages;
- `ppo_loss`: the clipped policy loss and the clipped value loss, with clip fractions, approximate
  KL and the value head's explained variance.

Masked means are over the real completion tokens of the whole batch (TRL's `masked_mean`)."""

from __future__ import annotations

from typing import NamedTuple

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Bessel-corrected variance over the masked entries (TRL's `masked_var(unbiased=True)`)."""
    mean = masked_mean(values, mask)
    count = mask.to(values.dtype).sum()
    return masked_mean((values - mean) ** 2, mask) * count / (count - 1).clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) over the masked entries; masked-out entries become 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(values.dtype)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(N,) index of each row's last real completion token (0 for an empty completion)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).amax(1)


def kl_penalised_rewards(scores: torch.Tensor, logps: torch.Tensor, reference_logps: torch.Tensor | None,
                         mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token rewards (N, L), per-token KL estimate (N, L)): r_t = -kl_coef (log pi_t - log
    ref_t), and the sequence score added at its last real token. Without a reference (kl_coef 0)
    the KL is 0."""
    m = mask.to(logps.dtype)
    kl = (logps - reference_logps) * m if reference_logps is not None else torch.zeros_like(logps)
    rewards = -kl_coef * kl
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype) * m.amax(1)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), each (N, L): delta_t = r_t + gamma V_{t+1} - V_t and
    A_t = delta_t + gamma lam A_{t+1}, with V and A zero past a row's last real token; returns
    = A + V. A backward loop over L (the recursion is sequential; L is the completion length)."""
    m = mask.to(values.dtype)
    values, rewards = values * m, rewards * m
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * m


class PPOLoss(NamedTuple):
    loss: torch.Tensor            # policy loss + vf_coef * value loss
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    policy_clipfrac: torch.Tensor  # share of tokens whose ratio the clip bound
    value_clipfrac: torch.Tensor   # share of tokens whose value the clip bound
    approx_kl: torch.Tensor       # 0.5 E[(log pi - log pi_old)^2], TRL's approxkl
    ratio: torch.Tensor           # mean pi / pi_old


def ppo_loss(logps: torch.Tensor, old_logps: torch.Tensor, values: torch.Tensor, old_values: torch.Tensor,
             advantages: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange: float,
             cliprange_value: float, vf_coef: float) -> PPOLoss:
    """The clipped surrogate max(-A r, -A clip(r, 1 - c, 1 + c)) and the clipped value loss
    0.5 max((V - R)^2, (clip(V, V_old - c_v, V_old + c_v) - R)^2), masked means over tokens."""
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    policy_loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    value_unclipped = (values - returns) ** 2
    value_clipped = (values_clipped - returns) ** 2
    value_loss = 0.5 * masked_mean(torch.maximum(value_unclipped, value_clipped), mask)
    with torch.no_grad():
        policy_clipfrac = masked_mean((clipped > unclipped).to(logps.dtype), mask)
        value_clipfrac = masked_mean((value_clipped > value_unclipped).to(values.dtype), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
        mean_ratio = masked_mean(ratio, mask)
    return PPOLoss(policy_loss + vf_coef * value_loss, policy_loss, value_loss, policy_clipfrac,
                   value_clipfrac, approx_kl, mean_ratio)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 when the value head predicts the returns,
    0 when it predicts no better than their mean."""
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-12)

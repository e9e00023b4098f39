"""GRPO and its relatives as pure functions of per-token log-probabilities: advantages against a
group, leave-one-out (RLOO) or batch (REINFORCE++) baseline, the k3 KL estimator, the clipped
policy-ratio loss per token (GRPO) or per sequence (GSPO) with its three aggregations (grpo,
dr_grpo, dapo), and the per-token helpers a task needs to get there (`token_logps`,
`token_entropy`, `masked_mean`).

Shapes: B completions (n_prompts * group_size, group-contiguous: the completions of one prompt
are adjacent), T completion positions (right-padded; `mask` marks the real tokens). Everything is
computed in at least float32 and only torch is used — no Lightning — so the task, the tests and
the benchmark against TRL share the same arithmetic.

References: GRPO — Shao et al. 2024 (DeepSeekMath, arXiv:2402.03300), eqs. 3 and 4; Dr. GRPO —
Liu et al. 2025 (arXiv:2503.20783); DAPO — Yu et al. 2025 (arXiv:2503.14476), clip-higher and
the token-level loss; the k3 KL estimator — Schulman 2020, http://joschu.net/blog/kl-approx.html;
batch-std scaling — Liu et al. 2025, "Lite PPO" (arXiv:2508.08221); RLOO — Ahmadian et al. 2024
(arXiv:2402.14740), the leave-one-out baseline of Kool et al. 2019; REINFORCE++ — Hu 2025
(arXiv:2501.03262), global batch normalisation; GSPO — Zheng et al. 2025 (arXiv:2507.18071), eq. 7.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ftexp.config.rl_tasks import (  # noqa: F401  (re-exported)
    ADVANTAGES,
    DEFAULT_SCALE,
    GRPO_LOSS_TYPES,
    IMPORTANCE_SAMPLING,
    SCALE_REWARDS,
)
from ftexp.runs.errors import ConfigError, did_you_mean

# Added to the standard deviation before dividing by it (TRL's constant): a group whose rewards
# barely differ gets large but finite advantages instead of a division by ~0.
STD_EPS = 1e-4
# A standard deviation this close to 0 counts as zero variance (torch.isclose's default atol,
# which is what TRL's `is_std_zero` uses).
ZERO_STD_ATOL = 1e-8


class GroupAdvantages(NamedTuple):
    """Advantages (B,) and what the caller logs: `zero_variance` (n_groups,) bool — groups whose
    scored rewards are all equal (or that have fewer than two scored rewards), whose advantages
    are exactly 0; `unscored` (B,) bool — NaN rewards, given advantage 0; `group_std` (n_groups,)
    — each group's standard deviation (Bessel-corrected, NaN where fewer than two rewards)."""

    advantages: torch.Tensor
    zero_variance: torch.Tensor
    unscored: torch.Tensor
    group_std: torch.Tensor

    @property
    def num_zero_variance(self) -> int:
        return int(self.zero_variance.sum())


class GRPOLoss(NamedTuple):
    """`loss` (scalar, with gradient) and detached diagnostics:

    - `policy_loss`: the clipped-surrogate part of `loss`, aggregated the same way (no KL);
    - `kl`: mean k3 KL to the reference over the real tokens (None without a reference);
    - `clip_low` / `clip_high` / `clip_region`: share of real tokens clipped at the lower bound
      (ratio < 1 - epsilon with A < 0), at the upper bound (ratio > 1 + epsilon_high with A > 0),
      or at either — only those tokens lose their gradient (TRL's clip_ratio/*_mean);
    - `ratio_mean`: mean policy ratio over the real tokens (1 on the first iteration);
    - `tokens`: the number of real tokens.
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor | None
    clip_low: torch.Tensor
    clip_high: torch.Tensor
    clip_region: torch.Tensor
    ratio_mean: torch.Tensor
    tokens: torch.Tensor


def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32: half-precision log-probs are widened, float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"'{name}={value}' is not a valid choice.{did_you_mean(str(value), choices)} "
                          f"Choices: {', '.join(choices)}.")


def check_grpo_loss_type(loss_type: str) -> None:
    """One-line ConfigError unless `loss_type` is one of GRPO_LOSS_TYPES."""
    _check_choice("loss_type", loss_type, GRPO_LOSS_TYPES)


def check_scale_rewards(scale: str) -> None:
    """One-line ConfigError unless `scale` is one of SCALE_REWARDS."""
    _check_choice("scale_rewards", scale, SCALE_REWARDS)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is set (0 when none is): the token-level
    mean every diagnostic uses. Positions outside the mask may hold anything, even NaN."""
    keep = mask.bool()
    values = _wide(values).masked_fill(~keep, 0.0)
    return values.sum() / keep.sum().clamp(min=1)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> GroupAdvantages:
    """GRPO's advantages: `compute_advantages(rewards, group_size, "group", scale)`."""
    return compute_advantages(rewards, group_size, "group", scale)


def compute_advantages(rewards: torch.Tensor, group_size: int, estimator: str = "group",
                       scale: str | None = None) -> GroupAdvantages:
    """Outcome advantages of B completions, B = n_groups * group_size in group-contiguous order
    (the completions of one prompt adjacent): each reward r_i minus a baseline,

    - estimator="group" (GRPO, DeepSeekMath §4.1.2): the mean of its group;
    - estimator="rloo" (RLOO): the mean of the *other* completions of its prompt, which keeps the
      baseline independent of r_i — with n scored rewards in the group, r_i - (S - r_i)/(n - 1) =
      n/(n - 1) * (r_i - S/n);
    - estimator="reinforce_pp" (REINFORCE++): the mean of the whole batch, so it needs no group
      (group_size 1 works) and a group whose rewards are all equal still learns against the batch;

    then scaled (`scale`, null: DEFAULT_SCALE of the estimator):

    - "group": divided by the group's standard deviation + 1e-4 (the GRPO paper, TRL's default);
    - "batch": divided by the standard deviation of all the batch's rewards + 1e-4 (Lite PPO with
      the group baseline; REINFORCE++'s global normalisation with the batch baseline);
    - "none": not divided (Dr. GRPO; RLOO as published and as TRL's RLOOTrainer by default).

    Standard deviations are Bessel-corrected (unbiased), as in TRL. NaN marks an unscored
    completion (TRL's "every reward function returned None"): left out of every mean and std,
    advantage 0. With the group and leave-one-out baselines, a group whose scored rewards are all
    equal (std within 1e-8 of 0, or fewer than two scored) gets advantage exactly 0 — it carries
    no learning signal; `zero_variance` flags such groups for every estimator. REINFORCE++'s KL
    term stays GRPO's (task.beta, k3 in the loss) rather than the paper's KL-shaped reward.
    """
    _check_choice("advantage", estimator, ADVANTAGES)
    scale = DEFAULT_SCALE[estimator] if scale is None else scale
    check_scale_rewards(scale)
    if estimator == "reinforce_pp" and scale == "group":
        raise ConfigError("scale_rewards=group does not apply to advantage=reinforce_pp (a batch "
                          "baseline): use batch or none.")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"'group_size={group_size}' must be an integer >= 1 (the completions sampled "
                          "per prompt).")
    rewards = _wide(torch.as_tensor(rewards))
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}; "
                         f"got shape {tuple(rewards.shape)}.")
    if torch.isinf(rewards).any():
        raise ValueError("rewards must be finite (NaN marks an unscored completion); got an infinite reward.")
    unscored = torch.isnan(rewards)
    grouped = rewards.view(-1, group_size)
    scored = ~unscored.view(-1, group_size)
    counts = scored.sum(-1)
    safe = grouped.masked_fill(~scored, 0.0)
    means = safe.sum(-1) / counts.clamp(min=1)
    deviations = (safe - means.unsqueeze(-1)).masked_fill(~scored, 0.0)
    # Bessel-corrected group std; NaN where fewer than two rewards are scored (undefined).
    group_var = deviations.pow(2).sum(-1) / (counts - 1).clamp(min=1)
    group_std = torch.where(counts > 1, group_var.sqrt(), torch.full_like(group_var, math.nan))
    zero_variance = (counts < 2) | torch.isclose(group_std, torch.zeros_like(group_std), atol=ZERO_STD_ATOL)
    flat = rewards[~unscored]

    if estimator == "group":
        centred = deviations
    elif estimator == "rloo":
        centred = deviations * (counts / (counts - 1).clamp(min=1)).unsqueeze(-1)
    else:  # reinforce_pp
        batch_mean = flat.mean() if flat.numel() else rewards.new_zeros(())
        centred = (safe - batch_mean).masked_fill(~scored, 0.0)

    result = centred
    if scale == "group":
        result = centred / (group_std.nan_to_num(0.0) + STD_EPS).unsqueeze(-1)
    elif scale == "batch":
        batch_std = flat.std() if flat.numel() > 1 else rewards.new_zeros(())
        result = centred / (batch_std + STD_EPS)
    # Exactly 0, not (r - mean) / 1e-4 of rounding noise, for unscored rows and (with a baseline
    # from the group) zero-variance groups.
    drop = ~scored if estimator == "reinforce_pp" else zero_variance.unsqueeze(-1) | ~scored
    result = result.masked_fill(drop, 0.0)
    return GroupAdvantages(result.reshape(-1), zero_variance, unscored, group_std)


def per_token_kl(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) by Schulman's k3 estimator, with d = ref - pi (log-probs of the
    sampled token):

        k3 = exp(d) - d - 1

    Unbiased for KL(pi || ref) when the token is drawn from pi, and >= 0 for every token (unlike
    the plain log-ratio), which is why GRPO (DeepSeekMath eq. 4) uses it. The reference is a
    constant (detached); the gradient reaches the policy. Not clamped, as in TRL: for a token
    the policy itself sampled, d is never large enough for exp to overflow.
    """
    pi = _wide(policy_logps)
    d = _wide(ref_logps).detach() - pi
    return torch.exp(d) - d - 1


def token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] per position: (B, T, V) logits that scored each token (already
    shifted: logits[:, t] is the distribution over ids[:, t]) and (B, T) ids → (B, T) log-probs.
    Float32 (float64 stays), one row at a time, so a bf16 batch is never widened all at once."""
    rows = []
    for row_logits, row_ids in zip(logits, ids, strict=True):
        row_logits = _wide(row_logits)
        picked = row_logits.gather(-1, row_ids.long().unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows) if rows else logits.new_zeros(ids.shape, dtype=torch.float32)


def token_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the policy's next-token distribution at each position, H = logsumexp(z)
    - sum softmax(z) z, from (B, T, V) logits; 0 where `mask` is not set. One row at a time in
    float32, like token_logps. `masked_mean(token_entropy(l, m), m)` is TRL's `entropy` metric."""
    rows = []
    for row_logits in logits:
        z = _wide(row_logits)
        log_norm = torch.logsumexp(z, dim=-1)
        rows.append(log_norm - (torch.softmax(z, dim=-1) * z).sum(-1))
    entropy = torch.stack(rows) if rows else logits.new_zeros(mask.shape, dtype=torch.float32)
    return entropy.masked_fill(~mask.bool(), 0.0)


def grpo_loss(policy_logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, epsilon: float,
              epsilon_high: float | None = None, beta: float, loss_type: str = "grpo",
              max_completion_length: int | None = None, num_tokens: float | None = None,
              importance_sampling: str = "token") -> GRPOLoss:
    """The GRPO objective (DeepSeekMath eq. 3), per token t of completion i, with the policy ratio
    r = exp(pi - old) and the completion's advantage A:

        l_it = -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A) + beta * k3_it

    (PPO's pessimistic clipped surrogate; `epsilon_high` defaults to `epsilon`, DAPO's
    clip-higher sets it larger, e.g. 0.28; k3 from per_token_kl.) Aggregated over the real tokens
    (`mask`), with |o_i| the length of completion i, G the number of completions and L the
    constant `max_completion_length`:

    - "grpo":    (1/G) sum_i (1/|o_i|) sum_t l_it   — the paper's per-sequence mean;
    - "dapo":    sum_it l_it / sum_i |o_i|          — DAPO's token-level mean;
    - "dr_grpo": sum_it l_it / (G L)                — Dr. GRPO's constant normaliser.

    importance_sampling="sequence" (GSPO, eq. 7) replaces each token's ratio by its completion's,
    the geometric mean of the token ratios, s_i = exp((1/|o_i|) sum_t (pi_it - old_it)), clipped
    the same way: a whole completion is in or out of the trust region. With loss_type="grpo" that
    is GSPO's per-sequence objective; "dapo" and "dr_grpo" then weight each completion by its
    length (TRL warns of the same). On-policy (r = 1) both levels give the same gradient for
    "grpo"; they differ once `old_logps` do (num_iterations > 1).

    `old_logps` are the log-probs of the policy that sampled the completions. None means on-policy
    (the first of `num_iterations` updates): old = pi detached, so r = 1 with the gradient
    A * grad(pi) — the same as passing the sampled log-probs when nothing has changed. `old_logps`
    and `ref_logps` are constants (detached). `ref_logps` may be None only when beta == 0; when
    given with beta == 0, KL is still reported but adds nothing to the loss.

    `advantages` is (B,) (one per completion) or (B, T). A completion with no real token adds 0
    to "grpo" and still counts in G, as in TRL. `num_tokens` replaces sum_i |o_i| for "dapo" when
    the batch is one of several accumulated into an optimizer step: pass the step's total (TRL's
    num_items_in_batch) — and then do not also divide by the number of accumulated batches.
    Padding positions may hold anything (even -inf); they never reach the loss or its gradient.
    """
    check_grpo_loss_type(loss_type)
    _check_choice("importance_sampling", importance_sampling, IMPORTANCE_SAMPLING)
    if not (isinstance(epsilon, int | float) and 0 < epsilon < 1):
        raise ConfigError(f"'epsilon={epsilon}' must lie in (0, 1): the policy ratio is clipped to "
                          "[1 - epsilon, 1 + epsilon_high].")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    if not (isinstance(eps_high, int | float) and eps_high > 0 and math.isfinite(eps_high)):
        raise ConfigError(f"'epsilon_high={epsilon_high}' must be > 0 (or null: the same as epsilon).")
    if not (isinstance(beta, int | float) and beta >= 0 and math.isfinite(beta)):
        raise ConfigError(f"'beta={beta}' must be >= 0 (the weight of the KL penalty; 0 turns it off).")
    if beta > 0 and ref_logps is None:
        raise ConfigError(f"'beta={beta}' needs the reference policy's log-probs; set beta=0 to train "
                          "without a reference.")
    if loss_type == "dr_grpo" and not (isinstance(max_completion_length, int)
                                       and not isinstance(max_completion_length, bool)
                                       and max_completion_length >= 1):
        raise ConfigError(f"loss_type=dr_grpo needs 'max_completion_length' as an integer >= 1 (the "
                          f"constant it divides by); got {max_completion_length}.")
    if num_tokens is not None and loss_type != "dapo":
        raise ConfigError(f"'num_tokens' only applies to loss_type=dapo, not {loss_type}.")
    if policy_logps.dim() != 2 or mask.shape != policy_logps.shape:
        raise ValueError(f"policy_logps and mask must both be (batch, tokens); got "
                         f"{tuple(policy_logps.shape)} and {tuple(mask.shape)}.")
    for name, other in (("old_logps", old_logps), ("ref_logps", ref_logps)):
        if other is not None and other.shape != policy_logps.shape:
            raise ValueError(f"{name} has shape {tuple(other.shape)}, "
                             f"policy_logps {tuple(policy_logps.shape)}.")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    if advantages.shape[0] != policy_logps.shape[0] or advantages.shape[1] not in (1, policy_logps.shape[1]):
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}; expected "
                         f"({policy_logps.shape[0]},) or {tuple(policy_logps.shape)}.")

    keep = mask.bool()
    weights = keep.to(torch.promote_types(policy_logps.dtype, torch.float32))
    # Zero the padding first, so a -inf or NaN there cannot turn into NaN through exp / its gradient
    # (masked_fill passes no gradient to the filled positions).
    pi = _wide(policy_logps).masked_fill(~keep, 0.0)
    old = pi.detach() if old_logps is None else _wide(old_logps).detach().masked_fill(~keep, 0.0)
    adv = _wide(advantages).detach()

    log_ratio = pi - old
    if importance_sampling == "sequence":
        lengths = weights.sum(-1, keepdim=True).clamp(min=1)
        per_sequence = (log_ratio * weights).sum(-1, keepdim=True) / lengths
        log_ratio = per_sequence.expand_as(pi)  # one ratio for every token of a completion
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - epsilon, 1 + eps_high)
    # The pessimistic bound: where the clipped term is the smaller one, its gradient is 0 — the
    # update stops pushing a token whose probability already moved past the trust region.
    surrogate = -torch.minimum(ratio * adv, clipped * adv)

    kl_tokens = None
    per_token = surrogate
    if ref_logps is not None:
        kl_tokens = per_token_kl(pi, _wide(ref_logps).masked_fill(~keep, 0.0))
        if beta > 0:
            per_token = surrogate + beta * kl_tokens

    def aggregate(values: torch.Tensor) -> torch.Tensor:
        total = values * weights
        if loss_type == "grpo":
            return (total.sum(-1) / weights.sum(-1).clamp(min=1)).mean()
        if loss_type == "dapo":
            denominator = weights.sum().clamp(min=1) if num_tokens is None else num_tokens
            return total.sum() / denominator
        return total.sum() / (values.shape[0] * max_completion_length)  # dr_grpo

    with torch.no_grad():
        # TRL's clip accounting: a token is clipped where the clipped term is the active one.
        low = (ratio < 1 - epsilon) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
        diagnostics = dict(
            policy_loss=aggregate(surrogate.detach()),
            kl=None if kl_tokens is None else masked_mean(kl_tokens.detach(), keep),
            clip_low=masked_mean(low.to(weights.dtype), keep),
            clip_high=masked_mean(high.to(weights.dtype), keep),
            clip_region=masked_mean((low | high).to(weights.dtype), keep),
            ratio_mean=masked_mean(ratio.detach(), keep),
            tokens=keep.sum(),
        )
    return GRPOLoss(loss=aggregate(per_token), **diagnostics)

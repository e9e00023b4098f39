"""Preference objectives as pure functions of log-probabilities: DPO and its loss family, SimPO,
ORPO, KTO, and the Bradley–Terry loss of reward models, plus `sequence_logps`, the helper that
turns a causal LM's logits into the per-sequence log-probabilities all of them take.

Conventions (as in TRL): every loss returns *per-example* losses (the caller takes the mean),
and the implicit rewards it reports are detached. Only torch here — no Lightning — so the
tasks, tests and any evaluation script share the same arithmetic.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ftexp.config.preference_tasks import DPO_LOSS_TYPES, check_beta, check_label_smoothing
from ftexp.runs.errors import ConfigError, did_you_mean


class PreferenceLoss(NamedTuple):
    """Per-example losses and the (detached) implicit rewards of the chosen / rejected answers."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


class OddsRatioLoss(NamedTuple):
    """ORPO: `losses = nll + beta * odds_ratio_losses`, per example; `log_odds` (detached) is
    log odds(chosen) - log odds(rejected), which TRL logs as `log_odds_chosen`."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    odds_ratio_losses: torch.Tensor
    log_odds: torch.Tensor


class KTOLoss(NamedTuple):
    """KTO: per-example losses in the input order, the (detached) rewards beta * (policy - ref)
    of every example (split them with the `desirable` mask), and the KL reference point used."""

    losses: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor


def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32: half-precision log-probs are widened, float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_dpo_loss_type(loss_type: str) -> None:
    """One-line ConfigError unless `loss_type` is one of DPO_LOSS_TYPES."""
    if loss_type not in DPO_LOSS_TYPES:
        raise ConfigError(f"'loss_type={loss_type}' is not a valid choice."
                          f"{did_you_mean(str(loss_type), DPO_LOSS_TYPES)} "
                          f"Choices: {', '.join(DPO_LOSS_TYPES)}.")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                   average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence log-probability of `labels` under a causal LM: the sum over t of
    log softmax(logits[:, t])[labels[:, t + 1]] for every label that is not `ignore_index`
    (so prompt and padding tokens, set to `ignore_index`, count for nothing).

    logits: (batch, seq, vocab); labels: (batch, seq), aligned with the input ids — the shift
    happens here. Computed in float32 (float64 stays float64), one row at a time as TRL does,
    so without autograd a bf16 batch is never widened to float32 all at once. `average=True`
    divides by the number of scored tokens (the length-normalised log-prob of SimPO, ORPO and
    TRL's IPO); a row with no scored token gets 0 rather than NaN.
    Returns (logps (batch,), token counts (batch,) int64).
    """
    labels = labels[:, 1:]
    mask = labels != ignore_index
    safe_labels = labels.masked_fill(~mask, 0)
    rows = []
    for row_logits, row_labels in zip(logits[:, :-1], safe_labels, strict=True):
        row_logits = _wide(row_logits)
        picked = row_logits.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    per_token = torch.stack(rows) if rows else logits.new_zeros(labels.shape, dtype=torch.float32)
    logps = (per_token * mask).sum(-1)
    counts = mask.sum(-1)
    if average:
        logps = logps / counts.clamp(min=1)
    return logps, counts


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None, *,
             beta: float, loss_type: str, label_smoothing: float = 0.0,
             reference_free: bool = False) -> PreferenceLoss:
    """The DPO loss family on z = (pi_c - ref_c) - (pi_r - ref_r), the difference of the policy's
    log-ratios to the reference for the chosen (c) and rejected (r) answer:

    - "sigmoid": -(1 - eps) log sigma(beta z) - eps log sigma(-beta z). eps = 0 is DPO (Rafailov
      et al. 2023, arXiv:2305.18290, eq. 7); eps > 0 is conservative DPO (cDPO, Mitchell 2023), as
      TRL 0.24 and TRL 1.16's CPOTrainer compute it. TRL 1.16's DPOTrainer ignores
      label_smoothing for sigmoid (it documents it for robust / EXO only); ftexp applies it
      rather than drop a setting the user gave.
    - "robust": [-(1 - eps) log sigma(beta z) + eps log sigma(-beta z)] / (1 - 2 eps), the unbiased
      estimate under label noise eps of robust DPO (Chowdhury et al. 2024, arXiv:2403.00409);
      equal to "sigmoid" at eps = 0.
    - "ipo": (z - 1 / (2 beta))^2, IPO (Azar et al. 2023, arXiv:2310.12036, eq. 17; beta is its tau).
      TRL computes z for IPO from *length-averaged* log-probs; this function uses what it is
      given, so a caller that follows TRL passes `sequence_logps(..., average=True)` for IPO
      (the rewards are then per-token too).
    - "hinge": max(0, 1 - beta z), the SLiC hinge on the log-ratio (Zhao et al. 2023,
      arXiv:2305.10425); beta plays 1/delta.

    eps is `label_smoothing` (sigmoid, robust only; [0, 0.5)). `reference_free=True` sets the
    reference log-probs to 0 (they may then be None). Inputs are sequence log-probs of shape
    (batch,). Rewards: beta * (pi - ref) per answer, detached, as TRL logs them.
    """
    check_dpo_loss_type(loss_type)
    check_beta(beta)
    check_label_smoothing(label_smoothing, loss_type)
    chosen, rejected = _wide(policy_chosen_logps), _wide(policy_rejected_logps)
    if not reference_free:
        chosen = chosen - _wide(ref_chosen_logps).detach()
        rejected = rejected - _wide(ref_rejected_logps).detach()
    z = chosen - rejected
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * z) - eps * F.logsigmoid(-beta * z)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * z) + eps * F.logsigmoid(-beta * z)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * z)
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def simpo_loss(policy_chosen_avg_logps: torch.Tensor, policy_rejected_avg_logps: torch.Tensor, *,
               beta: float, gamma: float, label_smoothing: float = 0.0) -> PreferenceLoss:
    """SimPO (Meng et al. 2024, arXiv:2405.14734, eq. 6), reference-free on length-averaged
    log-probs a_c, a_r (`sequence_logps(..., average=True)`), with m = beta (a_c - a_r) - gamma:

        -(1 - eps) log sigma(m) - eps log sigma(-m)      (eps = label_smoothing, 0 in the paper)

    `gamma` is the paper's target reward margin, in reward units (beta * avg log-prob) — the same
    as TRL's `CPOConfig.simpo_gamma` (TRL subtracts simpo_gamma / beta from the log-prob
    difference before scaling by beta). The SimPO repository's `gamma_beta_ratio` is gamma / beta.
    No NLL term: TRL's CPOTrainer adds `cpo_alpha` * NLL (pure SimPO is cpo_alpha=0).
    Rewards: beta * a, detached.
    """
    check_beta(beta)
    check_label_smoothing(label_smoothing)
    chosen, rejected = _wide(policy_chosen_avg_logps), _wide(policy_rejected_avg_logps)
    m = beta * (chosen - rejected) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(m) - label_smoothing * F.logsigmoid(-m)
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Mächler 2012): log(-expm1(x)) above
    -log 2, log1p(-exp(x)) below. Each branch only sees inputs in its own range, so the branch
    not taken cannot put NaN into the gradient (log1p(-exp(x)) is -inf once exp(x) rounds to 1).
    x = 0 (probability 1) is clamped to the largest float below 0, so the result stays finite."""
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = x > -math.log(2)
    half = torch.full_like(x, -math.log(2))
    return torch.where(near_zero, torch.log(-torch.expm1(torch.where(near_zero, x, half))),
                       torch.log1p(-torch.exp(torch.where(near_zero, half, x))))


def orpo_loss(policy_chosen_avg_logps: torch.Tensor, policy_rejected_avg_logps: torch.Tensor,
              chosen_nll: torch.Tensor, *, beta: float) -> OddsRatioLoss:
    """ORPO (Hong et al. 2024, arXiv:2403.07691, eqs. 4–7): with length-averaged log-probs a_c, a_r
    (`sequence_logps(..., average=True)`) and log odds(a) = a - log(1 - exp(a)),

        loss = NLL(chosen) + beta * -log sigma(log odds(a_c) - log odds(a_r))

    (TRL's `odds_ratio_loss`; beta is the paper's lambda). `chosen_nll` is per example (batch,)
    or a scalar, broadcast. task=orpo passes one token mean over the batch's chosen responses
    (the paper's L_SFT: the answer given the prompt); with task.nll_on_prompt=true over their
    prompts' tokens too, which is TRL's ORPOTrainer's NLL. Rewards: beta * a, detached, as TRL logs.
    """
    check_beta(beta)
    chosen, rejected = _wide(policy_chosen_avg_logps), _wide(policy_rejected_avg_logps)
    log_odds = (chosen - log1mexp(chosen)) - (rejected - log1mexp(rejected))
    odds_ratio_losses = -F.logsigmoid(log_odds)
    losses = _wide(chosen_nll) + beta * odds_ratio_losses
    return OddsRatioLoss(losses, beta * chosen.detach(), beta * rejected.detach(),
                         odds_ratio_losses, log_odds.detach())


def kto_kl_estimate(policy_mismatched_logps: torch.Tensor,
                    ref_mismatched_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean(pi(y'|x) - ref(y'|x))), detached, estimated on
    *mismatched* pairs: each prompt x with another example's completion y'. The caller builds
    them (TRL shifts completions by one within the batch, so a batch needs > 1 example). With
    several processes, average the unclamped means across them first; kto_loss clamps again."""
    return (_wide(policy_mismatched_logps) - _wide(ref_mismatched_logps)).mean().detach().clamp(min=0)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             kl: torch.Tensor | float, *, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> KTOLoss:
    """KTO (Ethayarajh et al. 2024, arXiv:2402.01306, eq. 7) on unpaired examples, with the
    log-ratio r = pi - ref and the reference point z0 = `kl` (detached, clamped at 0):

        desirable:    w_d * (1 - sigma(beta (r - z0)))
        undesirable:  w_u * (1 - sigma(beta (z0 - r)))

    `desirable` is a bool tensor (batch,). Losses keep the input order (TRL concatenates the
    desirable ones first); the weights are TRL's desirable_weight / undesirable_weight.
    Rewards: beta * r, detached. See kto_kl_estimate for `kl`.
    """
    check_beta(beta)
    logratio = _wide(policy_logps) - _wide(ref_logps).detach()
    z0 = torch.as_tensor(kl, dtype=logratio.dtype, device=logratio.device).detach().clamp(min=0)
    losses = torch.where(desirable.bool(),
                         desirable_weight * (1 - torch.sigmoid(beta * (logratio - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratio))))
    return KTOLoss(losses, beta * logratio.detach(), z0)


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                       margin: torch.Tensor | None = None) -> torch.Tensor:
    """Reward-model loss under the Bradley–Terry model (Bradley & Terry 1952; Ouyang et al. 2022,
    arXiv:2203.02155, eq. 1): -log sigma(s_c - s_r - m) per pair, with the optional margin m
    (TRL's RewardTrainer `margin` column; Llama 2, arXiv:2307.09288, eq. 2)."""
    diff = _wide(chosen_scores) - _wide(rejected_scores)
    if margin is not None:
        diff = diff - _wide(torch.as_tensor(margin, device=diff.device))
    return -F.logsigmoid(diff)


def pair_accuracy(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Share of pairs whose chosen score is strictly higher (a tie counts as wrong, as in TRL)."""
    return (chosen_scores > rejected_scores).float().mean()


def mean_margin(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Mean of chosen - rejected scores (or rewards), detached."""
    return (_wide(chosen_scores) - _wide(rejected_scores)).detach().mean()

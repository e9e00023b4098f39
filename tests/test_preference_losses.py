"""Preference losses against values worked out by hand from the published formulas (plain `math`,
never torch the same way), plus gradients, the reference-free / smoothing identities and
`sequence_logps` against a loop over tokens."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import top_level_imports
from ftexp.runs.errors import ConfigError
from ftexp.tasks import preference_losses as pl
from ftexp.tasks.preference_losses import (
    DPO_LOSS_TYPES,
    bradley_terry_loss,
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    log1mexp,
    mean_margin,
    orpo_loss,
    pair_accuracy,
    sequence_logps,
    simpo_loss,
)

REL = 1e-6


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(values: list[float], grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def approx(values: list[float]):
    return pytest.approx(values, rel=REL, abs=1e-12)


# Three pairs: policy / reference sequence log-probs of the chosen and rejected answers.
PC, PR = [-10.0, -12.5, -7.25], [-11.0, -9.0, -7.5]
RC, RR = [-10.5, -12.0, -8.0], [-10.0, -10.0, -7.0]
# z = (pc - rc) - (pr - rr), by hand: 0.5 + 1.0, -0.5 - 1.0, 0.75 + 0.5.
Z = [1.5, -1.5, 1.25]


def dpo_by_hand(loss_type: str, z: float, beta: float, eps: float) -> float:
    bce = -log_sigmoid(beta * z)  # DPO, Rafailov et al. eq. 7
    if loss_type == "sigmoid":  # cDPO: expected BCE under flip probability eps
        return (1 - eps) * bce + eps * -log_sigmoid(-beta * z)
    if loss_type == "robust":  # Chowdhury et al. 2024: ((1-eps) L(z) - eps L(-z)) / (1 - 2 eps)
        return ((1 - eps) * bce - eps * -log_sigmoid(-beta * z)) / (1 - 2 * eps)
    if loss_type == "ipo":  # Azar et al. eq. 17
        return (z - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":  # SLiC
        return max(0.0, 1 - beta * z)
    raise AssertionError(loss_type)


CASES = [(kind, beta, eps) for kind in DPO_LOSS_TYPES for beta in (0.1, 1.0)
         for eps in ((0.0, 0.2) if kind in ("sigmoid", "robust") else (0.0,))]


def test_loss_types_are_one_tuple_and_all_covered():
    assert isinstance(DPO_LOSS_TYPES, tuple)
    assert {kind for kind, _, _ in CASES} == {"sigmoid", "ipo", "hinge", "robust"} == set(DPO_LOSS_TYPES)


@pytest.mark.parametrize("loss_type,beta,eps", CASES)
def test_dpo_losses_by_hand(loss_type, beta, eps):
    out = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=beta, loss_type=loss_type, label_smoothing=eps)
    assert out.losses.tolist() == approx([dpo_by_hand(loss_type, z, beta, eps) for z in Z])
    assert out.chosen_rewards.tolist() == approx([beta * (p - r) for p, r in zip(PC, RC, strict=True)])
    assert out.rejected_rewards.tolist() == approx([beta * (p - r) for p, r in zip(PR, RR, strict=True)])


def test_hinge_is_zero_past_the_margin():
    out = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=1.0, loss_type="hinge")
    assert out.losses.tolist() == approx([0.0, 2.5, 0.0])


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_gradients_reach_the_policy_only(loss_type):
    pc, pr, rc, rr = t(PC, True), t(PR, True), t(RC, True), t(RR, True)
    out = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=loss_type)
    out.losses.sum().backward()
    assert pc.grad is not None and pc.grad.abs().sum() > 0 and pr.grad.abs().sum() > 0
    assert rc.grad is None and rr.grad is None
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_dpo_sigmoid_gradient_by_hand():
    # d/d pc of -log sigma(beta z) = -beta (1 - sigma(beta z)); d/d pr is its negative.
    pc, pr = t(PC, True), t(PR, True)
    dpo_loss(pc, pr, t(RC), t(RR), beta=0.1, loss_type="sigmoid").losses.sum().backward()
    assert pc.grad.tolist() == approx([-0.1 * (1 - sigmoid(0.1 * z)) for z in Z])
    assert pr.grad.tolist() == approx([0.1 * (1 - sigmoid(0.1 * z)) for z in Z])


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_reference_free_is_zero_reference(loss_type):
    zeros = torch.zeros(3, dtype=torch.float64)
    free = dpo_loss(t(PC), t(PR), None, None, beta=0.1, loss_type=loss_type, reference_free=True)
    ignored = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, loss_type=loss_type, reference_free=True)
    explicit = dpo_loss(t(PC), t(PR), zeros, zeros, beta=0.1, loss_type=loss_type)
    for a, b, c in zip(free, ignored, explicit, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert free.chosen_rewards.tolist() == approx([0.1 * p for p in PC])


def test_robust_without_smoothing_is_sigmoid():
    robust = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.3, loss_type="robust")
    plain = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.3, loss_type="sigmoid")
    assert robust.losses.tolist() == approx(plain.losses.tolist())
    smoothed = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.3, loss_type="robust", label_smoothing=0.1)
    assert not torch.allclose(smoothed.losses, plain.losses)  # negative control


def test_swapping_chosen_and_rejected_flips_the_logit():
    # -log sigma(-x) - (-log sigma(x)) = x: the swapped DPO loss is larger by exactly beta z.
    beta = 0.1
    right = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=beta, loss_type="sigmoid")
    swapped = dpo_loss(t(PR), t(PC), t(RR), t(RC), beta=beta, loss_type="sigmoid")
    assert (swapped.losses - right.losses).tolist() == approx([beta * z for z in Z])
    assert torch.equal(swapped.chosen_rewards, right.rejected_rewards)


def test_dpo_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"'loss_type=sigmod'.*Did you mean 'sigmoid'\?.*Choices: sigmoid, "
                                          r"ipo, hinge, robust\.$"):
        dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, loss_type="sigmod")
    with pytest.raises(ConfigError, match="no effect with loss_type=ipo"):
        dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ConfigError, match=r"\[0, 0\.5\)"):
        dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ConfigError, match="must be > 0"):
        dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.0, loss_type="ipo")


# SimPO: length-averaged log-probs; differences 0.3, -0.1, 0.6.
AC, AR = [-1.2, -0.8, -2.0], [-1.5, -0.7, -2.6]


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_simpo_by_hand(eps):
    beta, gamma = 2.0, 0.5
    out = simpo_loss(t(AC), t(AR), beta=beta, gamma=gamma, label_smoothing=eps)
    margins = [0.1, -0.7, 0.7]  # beta * (a_c - a_r) - gamma, by hand
    expected = [-(1 - eps) * log_sigmoid(m) - eps * log_sigmoid(-m) for m in margins]
    assert out.losses.tolist() == approx(expected)
    # TRL's CPO form: logits = (a_c - a_r) - simpo_gamma / beta, loss = -log sigma(beta * logits).
    if eps == 0.0:
        trl = [-log_sigmoid(beta * ((c - r) - gamma / beta)) for c, r in zip(AC, AR, strict=True)]
        assert out.losses.tolist() == approx(trl)
    assert out.chosen_rewards.tolist() == approx([beta * a for a in AC])
    assert out.rejected_rewards.tolist() == approx([beta * a for a in AR])


def test_simpo_gamma_is_a_margin():
    no_margin = simpo_loss(t(AC), t(AR), beta=2.0, gamma=0.0).losses
    with_margin = simpo_loss(t(AC), t(AR), beta=2.0, gamma=0.5).losses
    assert bool((with_margin > no_margin).all())  # a margin makes every pair harder
    ac, ar = t(AC, True), t(AR, True)
    simpo_loss(ac, ar, beta=2.0, gamma=0.5).losses.sum().backward()
    assert bool((ac.grad < 0).all()) and bool((ar.grad > 0).all())


# ORPO: length-averaged log-probs (one near 0, probability ~0.95) and per-example chosen NLL.
OC, OR_ = [-0.5, -1.3, -0.05], [-0.9, -1.1, -2.0]
NLL = [0.7, 1.1, 0.3]


def log_odds(a: float) -> float:
    p = math.exp(a)
    return math.log(p / (1 - p))


def test_orpo_by_hand():
    beta = 0.25
    out = orpo_loss(t(OC), t(OR_), t(NLL), beta=beta)
    ratios = [log_odds(c) - log_odds(r) for c, r in zip(OC, OR_, strict=True)]
    or_terms = [-log_sigmoid(x) for x in ratios]
    assert out.log_odds.tolist() == approx(ratios)
    assert out.odds_ratio_losses.tolist() == approx(or_terms)
    assert out.losses.tolist() == approx([n + beta * o for n, o in zip(NLL, or_terms, strict=True)])
    assert out.chosen_rewards.tolist() == approx([beta * a for a in OC])
    assert out.rejected_rewards.tolist() == approx([beta * a for a in OR_])


def test_orpo_scalar_nll_matches_trl_batch_form():
    # TRL: loss = nll - mean(beta * log sigma(log odds ratio)), one NLL for the batch.
    beta = 0.25
    out = orpo_loss(t(OC), t(OR_), torch.tensor(0.9, dtype=torch.float64), beta=beta)
    ratios = [log_odds(c) - log_odds(r) for c, r in zip(OC, OR_, strict=True)]
    trl = 0.9 - sum(beta * log_sigmoid(x) for x in ratios) / 3
    assert out.losses.mean().item() == pytest.approx(trl, rel=REL)
    oc = t(OC, True)
    orpo_loss(oc, t(OR_), t(NLL), beta=beta).losses.sum().backward()
    assert bool((oc.grad < 0).all())  # raising the chosen answer's odds lowers the loss


def test_log1mexp_is_accurate_and_finite():
    xs = [-1e-10, -1e-3, -0.5, -math.log(2), -1.0, -30.0, -700.0]
    got = log1mexp(t(xs)).tolist()
    assert got == approx([math.log(-math.expm1(x)) for x in xs])
    x32 = torch.tensor([0.0, -1e-10, -0.3, -5.0, -200.0], requires_grad=True)
    y = log1mexp(x32)
    y.sum().backward()
    assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(x32.grad).all())


# KTO: unpaired examples; log-ratios pi - ref = 0.5, -1.0, 0.2, -0.5.
KP, KR = [-5.0, -6.0, -4.0, -7.0], [-5.5, -5.0, -4.2, -6.5]
DESIRABLE = [True, False, True, False]
LOGRATIO = [0.5, -1.0, 0.2, -0.5]


def kto_by_hand(kl: float, beta: float, wd: float, wu: float) -> list[float]:
    z0 = max(kl, 0.0)
    return [wd * (1 - sigmoid(beta * (r - z0))) if d else wu * (1 - sigmoid(beta * (z0 - r)))
            for r, d in zip(LOGRATIO, DESIRABLE, strict=True)]


@pytest.mark.parametrize("kl,wd,wu", [(0.3, 1.0, 1.0), (0.3, 1.0, 1.5), (-0.4, 2.0, 1.0)])
def test_kto_by_hand(kl, wd, wu):
    beta = 0.5
    out = kto_loss(t(KP), t(KR), torch.tensor(DESIRABLE), torch.tensor(kl, dtype=torch.float64),
                   beta=beta, desirable_weight=wd, undesirable_weight=wu)
    assert out.losses.tolist() == approx(kto_by_hand(kl, beta, wd, wu))
    assert out.rewards.tolist() == approx([beta * r for r in LOGRATIO])
    assert out.kl.item() == pytest.approx(max(kl, 0.0), abs=1e-12)


def test_kto_gradients_skip_reference_and_kl():
    kp, kr = t(KP, True), t(KR, True)
    kl = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    out = kto_loss(kp, kr, torch.tensor(DESIRABLE), kl, beta=0.5)
    out.losses.sum().backward()
    assert kr.grad is None and kl.grad is None
    # desirable: push pi up (negative gradient); undesirable: push it down.
    assert kp.grad.tolist()[0] < 0 < kp.grad.tolist()[1]
    assert not out.rewards.requires_grad


def test_kto_kl_estimate_by_hand():
    policy, ref = t([-6.0, -5.0, -7.0], True), t([-6.5, -5.2, -6.9])
    kl = kto_kl_estimate(policy, ref)
    assert kl.item() == pytest.approx((0.5 + 0.2 - 0.1) / 3, rel=REL)
    assert not kl.requires_grad
    assert kto_kl_estimate(t([-7.0, -5.0]), t([-6.0, -5.5])).item() == 0.0  # mean -0.25, clamped


# Bradley–Terry: reward-model scores of the chosen / rejected answers (one tie).
SC, SR, MARGIN = [1.0, -0.5, 2.0, 0.3], [0.2, 0.5, 2.0, -1.0], [0.5, 0.0, 1.0, 0.25]


def test_bradley_terry_by_hand():
    with_margin = bradley_terry_loss(t(SC), t(SR), t(MARGIN))
    expected = [math.log1p(math.exp(-(c - r - m))) for c, r, m in zip(SC, SR, MARGIN, strict=True)]
    assert with_margin.tolist() == approx(expected)
    plain = bradley_terry_loss(t(SC), t(SR))
    assert plain.tolist() == approx([math.log1p(math.exp(-(c - r))) for c, r in zip(SC, SR, strict=True)])
    assert torch.equal(plain, bradley_terry_loss(t(SC), t(SR), torch.zeros(4, dtype=torch.float64)))
    assert pair_accuracy(t(SC), t(SR)).item() == 0.5  # the tie counts as wrong
    assert mean_margin(t(SC), t(SR)).item() == pytest.approx((0.8 - 1.0 + 0.0 + 1.3) / 4, rel=REL)


def test_bradley_terry_gradient_by_hand():
    sc, sr = t(SC, True), t(SR, True)
    bradley_terry_loss(sc, sr).sum().backward()
    expected = [-(1 - sigmoid(c - r)) for c, r in zip(SC, SR, strict=True)]
    assert sc.grad.tolist() == approx(expected)
    assert sr.grad.tolist() == approx([-g for g in expected])


def logps_by_loop(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    sums, counts = [], []
    for row_logits, row_labels in zip(logits.tolist(), labels.tolist(), strict=True):
        total, n = 0.0, 0
        for step in range(len(row_labels) - 1):
            target = row_labels[step + 1]
            if target == ignore_index:
                continue
            scores = row_logits[step]
            total += math.log(math.exp(scores[target]) / sum(math.exp(s) for s in scores))
            n += 1
        sums.append(total)
        counts.append(n)
    return sums, counts


def tiny_batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 7, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 7, (3, 6), generator=gen)
    labels[0, :2] = -100  # a prompt
    labels[1, 4:] = -100  # padding
    labels[2, :] = -100  # nothing scored
    return logits, labels


def test_sequence_logps_matches_a_loop():
    logits, labels = tiny_batch()
    sums, counts = logps_by_loop(logits, labels)
    got, n = sequence_logps(logits, labels)
    assert got.tolist() == approx(sums)
    assert n.tolist() == counts == [4, 3, 0]
    avg, _ = sequence_logps(logits, labels, average=True)
    assert avg.tolist() == approx([s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)])


def test_sequence_logps_ignored_tokens_contribute_nothing():
    logits, labels = tiny_batch()
    before, _ = sequence_logps(logits, labels)
    noise = 10.0 * torch.arange(7, dtype=torch.float64)  # not a constant shift: log-softmax changes
    changed = logits.clone()
    changed[0, 0] += noise  # predicts labels[0, 1], a prompt token
    changed[1, 3:] -= noise  # predict padding, or nothing (the last position)
    changed[2] *= 3.0
    changed[:, -1] = 0.0  # the last position predicts nothing
    after, _ = sequence_logps(changed, labels)
    assert torch.equal(before, after)
    changed[0, 1] += noise  # predicts labels[0, 2], which is scored: negative control
    assert not torch.allclose(before, sequence_logps(changed, labels)[0])


def test_sequence_logps_other_ignore_index_dtype_and_gradient():
    logits, labels = tiny_batch()
    other = labels.masked_fill(labels == -100, -1)
    assert torch.equal(sequence_logps(logits, labels)[0], sequence_logps(logits, other, ignore_index=-1)[0])
    half = logits.to(torch.bfloat16).requires_grad_()
    out, _ = sequence_logps(half, labels)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert half.grad is not None and half.grad[0, 0].abs().sum() == 0  # a prompt position


def test_module_stays_torch_only():
    imported = top_level_imports(pl.__file__)
    assert imported <= {"__future__", "math", "typing", "torch", "ftexp"}

"""GRPO's pure functions against values worked out by hand from the published formulas (plain
`math` and `statistics`, token by token, never torch the same way): group advantages in each
scaling, the k3 KL estimator, the clipped surrogate with each aggregation, its gradients, its
clipping bounds and diagnostics, and the per-token helpers."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from conftest import top_level_imports
from ftexp.runs.errors import ConfigError
from ftexp.tasks import grpo_losses
from ftexp.tasks.grpo_losses import (
    GRPO_LOSS_TYPES,
    SCALE_REWARDS,
    STD_EPS,
    compute_advantages,
    group_advantages,
    grpo_loss,
    masked_mean,
    per_token_kl,
    token_entropy,
    token_logps,
)

REL = 1e-6


def t(values, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def approx(values):
    return pytest.approx(values, rel=REL, abs=1e-12)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------
# group_advantages: 3 groups of 3. Group 0: mean 2, Bessel std 1. Group 1: all equal. Group 2:
# mean 1/3, deviations (-1/3, -1/3, 2/3), Bessel variance (1/9 + 1/9 + 4/9) / 2 = 1/3.
REWARDS = [1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 0.0, 1.0]
DEVIATIONS = [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1 / 3, -1 / 3, 2 / 3]
GROUP_STD = [1.0, 0.0, math.sqrt(1 / 3)]


def test_choices_are_tuples():
    assert GRPO_LOSS_TYPES == ("grpo", "dr_grpo", "dapo")
    assert SCALE_REWARDS == ("group", "batch", "none")


def test_group_scaling_by_hand():
    out = group_advantages(t(REWARDS), group_size=3, scale="group")
    expected = [d / (GROUP_STD[i // 3] + STD_EPS) for i, d in enumerate(DEVIATIONS)]
    assert out.advantages.tolist() == approx(expected)
    assert out.group_std.tolist() == approx(GROUP_STD)
    assert out.zero_variance.tolist() == [False, True, False]
    assert out.num_zero_variance == 1
    assert not out.unscored.any()


def test_batch_scaling_by_hand():
    # Lite PPO: the mean of each group, the (Bessel) std of the whole batch.
    out = group_advantages(t(REWARDS), group_size=3, scale="batch")
    batch_std = statistics.stdev(REWARDS)
    assert out.advantages.tolist() == approx([d / (batch_std + STD_EPS) for d in DEVIATIONS])
    assert out.zero_variance.tolist() == [False, True, False]  # still counted per group


def test_no_scaling_is_the_deviation():
    out = group_advantages(t(REWARDS), group_size=3, scale="none")
    assert out.advantages.tolist() == approx(DEVIATIONS)
    assert out.advantages.sum().item() == pytest.approx(0.0, abs=1e-12)  # zero-sum per group


def test_zero_variance_is_exactly_zero_even_with_rounding_noise():
    # 0.1 + 0.2 != 0.3 in floating point: (r - mean) / 1e-4 would leave noise of ~1e-13.
    rewards = t([0.1 + 0.2, 0.3, 0.3, 1.0, 0.0, 0.0])
    for scale in SCALE_REWARDS:
        out = group_advantages(rewards, group_size=3, scale=scale)
        assert out.advantages[:3].tolist() == [0.0, 0.0, 0.0]
        assert out.zero_variance.tolist() == [True, False]
        assert out.advantages[3:].abs().sum() > 0


def test_unscored_rewards_are_left_out():
    # Group 0: NaN left out, mean 2 and std sqrt(2) of (1, 3). Group 1: one scored → zero variance.
    nan = math.nan
    out = group_advantages(t([1.0, nan, 3.0, nan, 4.0, nan]), group_size=3, scale="group")
    s = math.sqrt(2)
    assert out.advantages.tolist() == approx([-1 / (s + STD_EPS), 0.0, 1 / (s + STD_EPS), 0.0, 0.0, 0.0])
    assert out.unscored.tolist() == [False, True, False, True, False, True]
    assert out.zero_variance.tolist() == [False, True]
    assert not torch.isnan(out.advantages).any()
    batch = group_advantages(t([1.0, nan, 3.0, nan, 4.0, nan]), group_size=3, scale="batch")
    assert batch.advantages.tolist() == approx([-1 / (statistics.stdev([1, 3, 4]) + STD_EPS), 0.0,
                                                1 / (statistics.stdev([1, 3, 4]) + STD_EPS), 0.0, 0.0, 0.0])


def test_group_of_one_has_no_signal():
    out = group_advantages(t([1.0, 2.0, 3.0]), group_size=1)
    assert out.advantages.tolist() == [0.0, 0.0, 0.0]
    assert out.num_zero_variance == 3


# RLOO and REINFORCE++ on the same rewards. RLOO: r_i minus the mean of the two others in its
# group, e.g. group 0: 1 - (2 + 3)/2 = -1.5, 2 - 2 = 0, 3 - 1.5 = 1.5; group 2: 0 - 0.5, 0 - 0.5,
# 1 - 0. REINFORCE++: r_i minus the batch mean 22/9, over the batch's Bessel std.
RLOO = [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0, -0.5, -0.5, 1.0]


def test_rloo_by_hand_is_unscaled_by_default():
    out = compute_advantages(t(REWARDS), group_size=3, estimator="rloo")
    assert out.advantages.tolist() == approx(RLOO)
    assert out.zero_variance.tolist() == [False, True, False]
    scaled = compute_advantages(t(REWARDS), 3, "rloo", scale="batch")
    assert scaled.advantages.tolist() == approx([a / (statistics.stdev(REWARDS) + STD_EPS) for a in RLOO])


def test_rloo_leaves_unscored_siblings_out_of_the_baseline():
    # Group 0: (1, NaN, 3, 5): 1 - (3 + 5)/2 = -3, 3 - 3 = 0, 5 - 2 = 3. Group 1: one scored → 0.
    nan = math.nan
    out = compute_advantages(t([1.0, nan, 3.0, 5.0, nan, 2.0, nan, nan]), 4, "rloo")
    assert out.advantages.tolist() == approx([-3.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    assert out.zero_variance.tolist() == [False, True]


def test_reinforce_pp_by_hand_learns_from_groups_of_equal_rewards():
    mean, std = statistics.mean(REWARDS), statistics.stdev(REWARDS)
    out = compute_advantages(t(REWARDS), group_size=3, estimator="reinforce_pp")
    assert out.advantages.tolist() == approx([(r - mean) / (std + STD_EPS) for r in REWARDS])
    assert out.advantages[3:6].tolist() == approx([(5 - mean) / (std + STD_EPS)] * 3)  # not zeroed
    assert out.zero_variance.tolist() == [False, True, False]  # still reported
    plain = compute_advantages(t(REWARDS), 3, "reinforce_pp", scale="none")
    assert plain.advantages.tolist() == approx([r - mean for r in REWARDS])
    single = compute_advantages(t([0.0, 1.0, math.nan, 3.0]), group_size=1, estimator="reinforce_pp")
    m, sd = statistics.mean([0, 1, 3]), statistics.stdev([0, 1, 3])
    assert single.advantages.tolist() == approx([-m / (sd + STD_EPS), (1 - m) / (sd + STD_EPS), 0.0,
                                                 (3 - m) / (sd + STD_EPS)])


def test_group_estimator_is_grpo_and_estimator_errors_are_one_line():
    assert (compute_advantages(t(REWARDS), 3, "group").advantages.tolist()
            == group_advantages(t(REWARDS), 3).advantages.tolist())
    with pytest.raises(ConfigError, match=r"'advantage=rlo'.*Did you mean 'rloo'\?") as err:
        compute_advantages(t(REWARDS), 3, "rlo")
    one_line(err)
    with pytest.raises(ConfigError, match="scale_rewards=group does not apply to advantage=reinforce_pp"):
        compute_advantages(t(REWARDS), 3, "reinforce_pp", scale="group")


def test_advantage_errors():
    with pytest.raises(ConfigError, match=r"'scale_rewards=grop'.*Did you mean 'group'\?.*Choices: group, "
                                          r"batch, none\.$") as err:
        group_advantages(t(REWARDS), 3, scale="grop")
    one_line(err)
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError, match="group_size"):
            group_advantages(t(REWARDS), bad)
    with pytest.raises(ValueError, match="divisible by group_size=4"):
        group_advantages(t(REWARDS), 4)
    with pytest.raises(ValueError, match="finite"):
        group_advantages(t([1.0, math.inf]), 2)


# ------------------------------------------------------------------------------------------------
# per_token_kl: k3 = exp(d) - d - 1 with d = ref - pi.


def test_k3_by_hand_and_its_gradient():
    pi, ref = [-1.0, -2.0, -0.5, -3.0], [-1.5, -2.0, -0.1, -1.0]
    policy = t(pi, grad=True)
    kl = per_token_kl(policy, t(ref))
    expected = [math.exp(r - p) - (r - p) - 1 for p, r in zip(pi, ref, strict=True)]
    assert kl.tolist() == approx(expected)
    assert kl[1].item() == 0.0 and bool((kl >= 0).all())
    kl.sum().backward()
    # d/dpi [exp(ref - pi) - (ref - pi) - 1] = 1 - exp(ref - pi)
    assert policy.grad.tolist() == approx([1 - math.exp(r - p) for p, r in zip(pi, ref, strict=True)])


# ------------------------------------------------------------------------------------------------
# grpo_loss. Three completions of lengths 3, 1 and 2 in a (3, 4) batch; padding is set to junk
# (-inf / nan) to show it never matters. Token ratios exp(pi - old) span both clipping bounds.
NEG_INF, NAN = -math.inf, math.nan
LENGTHS = [3, 1, 2]
PI = [[-1.0, -0.6, -2.0, NEG_INF], [-0.7, NAN, NEG_INF, NEG_INF], [-1.2, -0.9, NAN, NAN]]
OLD = [[-1.22, -1.0, -1.7, 0.0], [-0.4, 0.0, 0.0, 0.0], [-1.25, -0.6, 0.0, 0.0]]
REF = [[-0.9, -0.8, -2.2, NAN], [-0.8, 0.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0]]
ADV = [0.8, -1.3, 0.5]
MASK = [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
L_MAX = 5


def by_hand(loss_type, beta, eps, eps_high, with_kl=True):
    """(loss, policy loss, mean KL, clip low / high / region fractions) token by token."""
    eps_high = eps if eps_high is None else eps_high
    per_seq, per_seq_policy, kls, low, high = [], [], [], 0, 0
    for i, n in enumerate(LENGTHS):
        a = ADV[i]
        terms, policy_terms = [], []
        for j in range(n):
            ratio = math.exp(PI[i][j] - OLD[i][j])
            clipped = min(max(ratio, 1 - eps), 1 + eps_high)
            surrogate = -min(ratio * a, clipped * a)
            d = REF[i][j] - PI[i][j]
            kl = math.exp(d) - d - 1
            kls.append(kl)
            low += ratio < 1 - eps and a < 0
            high += ratio > 1 + eps_high and a > 0
            policy_terms.append(surrogate)
            terms.append(surrogate + (beta * kl if with_kl else 0.0))
        per_seq.append(terms)
        per_seq_policy.append(policy_terms)
    n_tokens, n_seq = sum(LENGTHS), len(LENGTHS)

    def aggregate(seqs):
        if loss_type == "grpo":  # (1/G) sum_i (1/|o_i|) sum_t
            return sum(sum(s) / len(s) for s in seqs) / n_seq
        if loss_type == "dapo":  # sum_it / sum_i |o_i|
            return sum(sum(s) for s in seqs) / n_tokens
        return sum(sum(s) for s in seqs) / (n_seq * L_MAX)  # dr_grpo: sum_it / (G L)

    return (aggregate(per_seq), aggregate(per_seq_policy), sum(kls) / n_tokens,
            low / n_tokens, high / n_tokens, (low + high) / n_tokens)


def loss_of(loss_type, beta=0.0, eps=0.2, eps_high=None, ref=True, old=True, **kwargs):
    return grpo_loss(t(PI), t(OLD) if old else None, t(REF) if ref else None, t(ADV),
                     torch.tensor(MASK, dtype=torch.bool), epsilon=eps, epsilon_high=eps_high, beta=beta,
                     loss_type=loss_type, max_completion_length=L_MAX, **kwargs)


def test_the_fixture_exercises_both_bounds():
    ratios = [math.exp(PI[i][j] - OLD[i][j]) for i, n in enumerate(LENGTHS) for j in range(n)]
    assert min(ratios) < 0.8 and max(ratios) > 1.28 and any(1.2 < r < 1.28 for r in ratios)
    # ... so clip-higher changes what is clipped: 2 of 6 tokens at 1 + 0.2, 1 at 1 + 0.28.
    assert loss_of("grpo").clip_high.item() == pytest.approx(2 / 6)
    assert loss_of("grpo", eps_high=0.28).clip_high.item() == pytest.approx(1 / 6)
    assert loss_of("grpo").clip_low.item() == pytest.approx(1 / 6)


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_each_aggregation_by_hand(loss_type, beta, eps_high):
    out = loss_of(loss_type, beta=beta, eps_high=eps_high)
    loss, policy, kl, low, high, region = by_hand(loss_type, beta, 0.2, eps_high)
    assert out.loss.item() == pytest.approx(loss, rel=REL)
    assert out.policy_loss.item() == pytest.approx(policy, rel=REL)
    assert out.kl.item() == pytest.approx(kl, rel=REL)
    assert (out.clip_low.item(), out.clip_high.item(), out.clip_region.item()) == approx([low, high, region])
    assert out.tokens.item() == 6
    for diagnostic in out[1:]:
        assert not diagnostic.requires_grad


def gspo_by_hand(eps, eps_high):
    """GSPO (eq. 7) with the per-sequence mean: s_i = exp(mean_t(pi - old)), one clipped term per
    completion; the loss is -(1/G) sum_i min(s_i A_i, clip(s_i) A_i)."""
    terms, low, high = [], 0, 0
    for i, n in enumerate(LENGTHS):
        s_i = math.exp(sum(PI[i][j] - OLD[i][j] for j in range(n)) / n)
        clipped = min(max(s_i, 1 - eps), 1 + eps_high)
        terms.append(-min(s_i * ADV[i], clipped * ADV[i]))
        low += n * (s_i < 1 - eps and ADV[i] < 0)
        high += n * (s_i > 1 + eps_high and ADV[i] > 0)
    return sum(terms) / len(terms), low / sum(LENGTHS), high / sum(LENGTHS)


@pytest.mark.parametrize("eps, eps_high", [(0.2, None), (0.05, 0.1), (3e-4, 4e-4)])
def test_sequence_level_ratio_is_gspo_by_hand(eps, eps_high):
    out = loss_of("grpo", eps=eps, eps_high=eps_high, importance_sampling="sequence")
    loss, low, high = gspo_by_hand(eps, eps_high if eps_high is not None else eps)
    assert out.loss.item() == pytest.approx(loss, rel=REL)
    assert (out.clip_low.item(), out.clip_high.item()) == approx([low, high])
    assert out.loss.item() != pytest.approx(loss_of("grpo", eps=eps, eps_high=eps_high).loss.item(), rel=1e-3)


def test_sequence_level_gradient_by_hand():
    # Unclipped (wide bounds): d/d pi_it of -(1/G) s_i A_i is -(1/G) A_i s_i / |o_i| for every real
    # token of completion i; on-policy (s_i = 1) that is GRPO's gradient exactly.
    policy = t(PI, grad=True)
    grpo_loss(policy, t(OLD), None, t(ADV), torch.tensor(MASK, dtype=torch.bool), epsilon=0.99,
              epsilon_high=50.0, beta=0.0, importance_sampling="sequence").loss.backward()
    for i, n in enumerate(LENGTHS):
        s_i = math.exp(sum(PI[i][j] - OLD[i][j] for j in range(n)) / n)
        assert policy.grad[i, :n].tolist() == approx([-ADV[i] * s_i / (3 * n)] * n)
        assert policy.grad[i, n:].abs().sum() == 0
    on_policy = {}
    for level in ("token", "sequence"):
        policy = t(PI, grad=True)
        grpo_loss(policy, None, None, t(ADV), torch.tensor(MASK, dtype=torch.bool), epsilon=0.2,
                  beta=0.0, importance_sampling=level).loss.backward()
        on_policy[level] = policy.grad.nan_to_num(0.0).flatten().tolist()
    assert on_policy["token"] == approx(on_policy["sequence"])


def test_the_aggregations_differ_as_their_formulas_say():
    # Same per-token losses, different weights: dapo's sum / 6 tokens vs dr_grpo's sum / (3 * 5).
    dapo, dr = loss_of("dapo").loss.item(), loss_of("dr_grpo").loss.item()
    assert dr == pytest.approx(dapo * 6 / 15, rel=REL)
    assert loss_of("grpo").loss.item() != pytest.approx(dapo, rel=1e-3)


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_on_policy_gradient_is_the_advantage_over_the_length(loss_type):
    # num_iterations = 1: old = pi (detached), so ratio = 1, nothing is clipped and
    # d loss / d pi_it = -A_i * w_i with w_i = 1 / (G |o_i|) (grpo), 1 / sum |o| (dapo), 1 / (G L).
    weights = {"grpo": [1 / (3 * n) for n in LENGTHS], "dapo": [1 / 6] * 3,
               "dr_grpo": [1 / 15] * 3}[loss_type]
    for old in ("none", "same values"):
        policy = t(PI, grad=True)
        old_logps = None if old == "none" else t(PI)
        out = grpo_loss(policy, old_logps, None, t(ADV), torch.tensor(MASK).bool(), epsilon=0.2, beta=0.0,
                        loss_type=loss_type, max_completion_length=L_MAX)
        out.loss.backward()
        expected = [[-ADV[i] * weights[i] if j < LENGTHS[i] else 0.0 for j in range(4)] for i in range(3)]
        assert policy.grad.tolist() == [approx(row) for row in expected]
        assert out.ratio_mean.item() == 1.0 and out.clip_region.item() == 0.0
        # The value is -(advantage), aggregated: for grpo, -mean_i A_i.
        if loss_type == "grpo":
            assert out.loss.item() == pytest.approx(-sum(ADV) / 3, rel=REL)


def test_old_logps_passed_with_the_graph_are_still_constants():
    # Passing the policy's own tensor as old must not cancel the gradient (exp(pi - pi) has none).
    policy = t(PI, grad=True)
    grpo_loss(policy, policy, None, t(ADV), torch.tensor(MASK).bool(), epsilon=0.2, beta=0.0,
              loss_type="dapo").loss.backward()
    assert policy.grad[0, 0].item() == pytest.approx(-ADV[0] / 6, rel=REL)


def token_gradient(log_ratio: float, advantage: float, eps: float = 0.2, eps_high=None) -> tuple[float, bool]:
    """d loss / d pi for one token (dapo over a single token) and whether it counted as clipped."""
    policy = t([[log_ratio]], grad=True)
    out = grpo_loss(policy, t([[0.0]]), None, t([advantage]), torch.ones(1, 1, dtype=torch.bool),
                    epsilon=eps, epsilon_high=eps_high, beta=0.0, loss_type="dapo")
    out.loss.backward()
    return policy.grad.item(), out.clip_region.item() == 1.0


@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_clipping_engages_exactly_past_each_bound(eps_high):
    upper = 1 + (0.2 if eps_high is None else eps_high)
    tiny = 1e-9
    # A > 0: full gradient -ratio * A just inside 1 + eps_high, none just past it.
    inside, clipped = token_gradient(math.log(upper) - tiny, 2.0, eps_high=eps_high)
    assert inside == pytest.approx(-upper * 2.0, rel=1e-6) and not clipped
    outside, clipped = token_gradient(math.log(upper) + tiny, 2.0, eps_high=eps_high)
    assert outside == 0.0 and clipped
    # A < 0: the lower bound 1 - eps.
    inside, clipped = token_gradient(math.log(0.8) + tiny, -2.0, eps_high=eps_high)
    assert inside == pytest.approx(0.8 * 2.0, rel=1e-6) and not clipped
    outside, clipped = token_gradient(math.log(0.8) - tiny, -2.0, eps_high=eps_high)
    assert outside == 0.0 and clipped


def test_clip_higher_is_asymmetric():
    # A ratio of 1.25 is past 1 + 0.2 but inside DAPO's 1 + 0.28; the lower bound stays 0.8.
    grad_symmetric, clipped_symmetric = token_gradient(math.log(1.25), 1.0)
    grad_higher, clipped_higher = token_gradient(math.log(1.25), 1.0, eps_high=0.28)
    assert grad_symmetric == 0.0 and clipped_symmetric
    assert grad_higher == pytest.approx(-1.25, rel=1e-9) and not clipped_higher
    assert token_gradient(math.log(0.79), -1.0, eps_high=0.28) == (0.0, True)


def test_the_pessimistic_side_is_never_clipped():
    # min(r A, clip(r) A) only stops tokens whose change would help: a token made *less* likely
    # despite A > 0, or *more* likely despite A < 0, keeps its full gradient and is not counted.
    grad, clipped = token_gradient(math.log(0.5), 1.0)
    assert grad == pytest.approx(-0.5, rel=1e-9) and not clipped
    grad, clipped = token_gradient(math.log(2.0), -1.0)
    assert grad == pytest.approx(2.0, rel=1e-9) and not clipped


def test_kl_term_is_beta_times_the_aggregated_k3():
    for loss_type in GRPO_LOSS_TYPES:
        plain, with_kl = loss_of(loss_type), loss_of(loss_type, beta=0.5)
        kl_only = by_hand(loss_type, 1.0, 0.2, None)[0] - by_hand(loss_type, 0.0, 0.2, None)[0]
        assert with_kl.loss.item() - plain.loss.item() == pytest.approx(0.5 * kl_only, rel=REL)
        assert with_kl.policy_loss.item() == pytest.approx(plain.policy_loss.item(), rel=1e-12)


def test_beta_zero_needs_no_reference():
    free = loss_of("grpo", beta=0.0, ref=False)
    assert free.kl is None
    with_ref = loss_of("grpo", beta=0.0)
    assert free.loss.item() == with_ref.loss.item()  # reported, never added
    assert with_ref.kl is not None and with_ref.kl.item() > 0
    with pytest.raises(ConfigError, match=r"'beta=0\.1' needs the reference.*set beta=0") as err:
        loss_of("grpo", beta=0.1, ref=False)
    one_line(err)


def test_padding_junk_never_reaches_the_loss_or_gradient():
    for loss_type in GRPO_LOSS_TYPES:
        policy = t(PI, grad=True)
        out = grpo_loss(policy, t(OLD), t(REF), t(ADV), torch.tensor(MASK).bool(), epsilon=0.2, beta=0.1,
                        loss_type=loss_type, max_completion_length=L_MAX)
        out.loss.backward()
        assert math.isfinite(out.loss.item())
        assert bool(torch.isfinite(policy.grad).all())
        assert policy.grad[~torch.tensor(MASK).bool()].abs().sum().item() == 0.0


def test_empty_completion_counts_in_grpo_and_adds_nothing():
    mask = torch.tensor([[1, 1], [0, 0]]).bool()
    pi = t([[-1.0, -2.0], [-1.0, -1.0]], grad=True)
    out = grpo_loss(pi, None, None, t([1.0, -1.0]), mask, epsilon=0.2, beta=0.0)
    assert out.loss.item() == pytest.approx(-1.0 / 2, rel=REL)  # (-(1 + 1) / 2 + 0) / G=2
    out.loss.backward()
    assert pi.grad[1].tolist() == [0.0, 0.0]
    empty = grpo_loss(t([[0.0]], grad=True), None, None, t([1.0]), torch.zeros(1, 1).bool(), epsilon=0.2,
                      beta=0.0, loss_type="dapo")
    assert empty.loss.item() == 0.0 and empty.loss.requires_grad and empty.tokens.item() == 0


def test_dapo_token_count_of_the_accumulated_step():
    # Two accumulated halves, each divided by the step's 6 tokens, add up to the whole batch's loss.
    whole = loss_of("dapo", eps_high=0.28).loss.item()
    halves = 0.0
    for rows in ([0], [1, 2]):
        part = grpo_loss(t(PI)[rows], t(OLD)[rows], None, t(ADV)[rows], torch.tensor(MASK).bool()[rows],
                         epsilon=0.2, epsilon_high=0.28, beta=0.0, loss_type="dapo", num_tokens=6)
        halves += part.loss.item()
    assert halves == pytest.approx(whole, rel=REL)


def test_token_level_advantages_and_half_precision():
    adv = t([[0.8, 0.8, 0.8, 0.0], [-1.3, 0, 0, 0], [0.5, 0.5, 0, 0]])
    same = grpo_loss(t(PI), t(OLD), None, adv, torch.tensor(MASK).bool(), epsilon=0.2, beta=0.0)
    assert same.loss.item() == pytest.approx(loss_of("grpo").loss.item(), rel=REL)
    half = grpo_loss(torch.zeros(2, 3, dtype=torch.bfloat16, requires_grad=True), None, None,
                     torch.tensor([1.0, -1.0], dtype=torch.bfloat16), torch.ones(2, 3).bool(),
                     epsilon=0.2, beta=0.0)
    assert half.loss.dtype == torch.float32


def test_loss_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"'loss_type=drgrpo'.*Did you mean 'dr_grpo'\?.*Choices: grpo, "
                                          r"dr_grpo, dapo\.$") as err:
        loss_of("drgrpo")
    one_line(err)
    cases = [(dict(eps=0.0), r"'epsilon=0\.0' must lie in \(0, 1\)"),
             (dict(eps=1.0), r"'epsilon=1\.0' must lie in \(0, 1\)"),
             (dict(eps_high=0.0), r"'epsilon_high=0\.0' must be > 0"),
             (dict(beta=-0.1), r"'beta=-0\.1' must be >= 0"),
             (dict(num_tokens=6), r"'num_tokens' only applies to loss_type=dapo")]
    for kwargs, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as err:
            loss_of("grpo", **kwargs)
        one_line(err)
    with pytest.raises(ConfigError, match="loss_type=dr_grpo needs 'max_completion_length'") as err:
        grpo_loss(t(PI), None, None, t(ADV), torch.tensor(MASK).bool(), epsilon=0.2, beta=0.0,
                  loss_type="dr_grpo")
    one_line(err)
    with pytest.raises(ValueError, match="advantages has shape"):
        grpo_loss(t(PI), None, None, t([1.0, 2.0]), torch.tensor(MASK).bool(), epsilon=0.2, beta=0.0)
    with pytest.raises(ValueError, match="old_logps has shape"):
        grpo_loss(t(PI), t([[0.0]]), None, t(ADV), torch.tensor(MASK).bool(), epsilon=0.2, beta=0.0)


# ------------------------------------------------------------------------------------------------
# Per-token helpers.


def test_token_logps_and_entropy_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    ids = torch.tensor([[0, 4, 2], [1, 1, 3]])
    logps = token_logps(logits, ids)
    for b in range(2):
        for s in range(3):
            row = logits[b, s].tolist()
            log_z = math.log(sum(math.exp(x) for x in row))
            assert logps[b, s].item() == pytest.approx(row[ids[b, s]] - log_z, rel=REL)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    entropy = token_entropy(logits, mask)
    row = logits[0, 1].tolist()
    log_z = math.log(sum(math.exp(x) for x in row))
    by_hand_entropy = -sum(math.exp(x - log_z) * (x - log_z) for x in row)
    assert entropy[0, 1].item() == pytest.approx(by_hand_entropy, rel=REL)
    assert entropy[0, 2].item() == 0.0 and entropy[1, 1].item() == 0.0
    uniform = token_entropy(torch.zeros(1, 2, 7, dtype=torch.bfloat16), torch.ones(1, 2).bool())
    assert uniform.dtype == torch.float32 and uniform.tolist() == [approx([math.log(7)] * 2)]


def test_masked_mean_ignores_what_is_masked():
    values = t([[1.0, NAN], [3.0, 5.0]])
    assert masked_mean(values, torch.tensor([[1, 0], [1, 1]]).bool()).item() == pytest.approx(3.0)
    assert masked_mean(values, torch.zeros(2, 2).bool()).item() == 0.0


def test_module_stays_torch_only():
    imported = top_level_imports(grpo_losses.__file__)
    assert imported <= {"__future__", "math", "typing", "torch", "ftexp"}

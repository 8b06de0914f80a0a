"""GRPO maths pinned against hand-computed values (grpo/algorithms.py)."""
import math

import pytest
import torch

from grpo.algorithms import (group_advantages, kl_k3, normalize_loss, pass_at_k, per_token_loss,
                             zero_std_fraction)

R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
G = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def test_group_scaling_uses_group_sample_std():
    adv = group_advantages(R, G, "group", eps=0.0)
    s = math.sqrt(4 * 0.25 / 3)  # sample std of [1, 0, 0, 1]
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / s)


def test_batch_scaling_uses_batch_std():
    adv = group_advantages(R, G, "batch", eps=0.0)
    s = math.sqrt((6 * 0.25 ** 2 + 2 * 0.75 ** 2) / 7)  # sample std over all 8 rewards
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / s)
    assert torch.all(adv[4:] == 0)


def test_batch_scaling_on_shards_with_global_std_equals_the_whole_batch():
    # what each of 2 processes computes from its own groups, given the std of the gathered rewards
    whole = group_advantages(R, G, "batch", eps=0.0)
    std = R.std()
    shards = [group_advantages(R[G == g], G[G == g], "batch", eps=0.0, batch_std=std) for g in (0, 1)]
    assert torch.allclose(torch.cat(shards), whole)
    # without it, the second shard (all rewards equal) would divide by its own zero std
    assert not torch.allclose(group_advantages(R[:4], G[:4], "batch", eps=0.0), whole[:4])


def test_no_scaling_is_centering_only():
    adv = group_advantages(R, G, "none")
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_std_groups_get_zero_advantage(scale):
    adv = group_advantages(R, G, scale)
    assert torch.all(adv[4:] == 0.0)
    assert zero_std_fraction(R, G) == 0.5


def test_zero_std_fraction_with_unsorted_group_ids():
    r = torch.tensor([1.0, 2.0, 1.0, 1.0, 3.0, 3.0])
    g = torch.tensor([7, 2, 7, 2, 9, 9])  # group 7: equal; 2: not; 9: equal
    assert zero_std_fraction(r, g) == pytest.approx(2 / 3)
    assert zero_std_fraction(torch.tensor([]), torch.tensor([], dtype=torch.long)) == 0.0


def test_groups_of_unequal_size_and_unsorted_ids():
    r = torch.tensor([3.0, 1.0, 2.0, 5.0, 5.0])
    g = torch.tensor([7, 2, 7, 2, 2])
    adv = group_advantages(r, g, "none")
    assert torch.allclose(adv, torch.tensor([0.5, -8 / 3, -0.5, 4 / 3, 4 / 3]))


def test_bad_scale_name():
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(R, G, "per_token")


# ---- losses on a hand-made ragged batch: 2 sequences, lengths 2 and 3, ratio 1, A = [1, -2]
LOGP = torch.log(torch.tensor([[0.5, 0.4, 0.9], [0.3, 0.2, 0.6]]))
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
ADV = torch.tensor([1.0, -2.0])


def _per_tok():
    loss, _ = per_token_loss(LOGP, LOGP.clone(), ADV, MASK)
    return loss  # -A per token: row 0 -> -1, row 1 -> +2


@pytest.mark.parametrize("loss_type,expected", [
    ("grpo", ((-1 - 1) / 2 + (2 + 2 + 2) / 3) / 2),   # mean of per-sequence means = 0.5
    ("bnpo", (-2 + 6) / 5),                          # token mean over the batch = 0.8
    ("dr_grpo", (-2 + 6) / (2 * 4)),                 # sum / (N * max_completion_length=4) = 0.5
    ("dapo", (-2 + 6) / 5),                          # sum / tokens in the whole step
])
def test_loss_normalisations(loss_type, expected):
    got = normalize_loss(_per_tok(), MASK, loss_type, max_completion_length=4)
    assert got.item() == pytest.approx(expected)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_micro_batches_sum_to_full_batch(loss_type):
    pt = _per_tok()
    full = normalize_loss(pt, MASK, loss_type, max_completion_length=4)
    if loss_type == "bnpo":  # bnpo averages per-micro-batch token means: equal only for equal token counts
        m = torch.ones_like(MASK)
        full = normalize_loss(pt, m, loss_type, max_completion_length=4)
        parts = [normalize_loss(pt[i:i + 1], m[i:i + 1], loss_type, max_completion_length=4, num_micro_batches=2)
                 for i in range(2)]
    else:
        parts = [normalize_loss(pt[i:i + 1], MASK[i:i + 1], loss_type, max_completion_length=4, global_seqs=2,
                                global_tokens=float(MASK.sum())) for i in range(2)]
    assert sum(p.item() for p in parts) == pytest.approx(full.item())


def test_masked_tokens_do_not_count():
    pt = _per_tok()
    pt2 = pt.clone()
    pt2[0, 2] = 1e6  # a masked position
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo"):
        assert normalize_loss(pt2, MASK, lt, max_completion_length=4).item() == pytest.approx(
            normalize_loss(pt, MASK, lt, max_completion_length=4).item())


def test_asymmetric_clipping():
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    # positive advantage, ratio 1.5: clipped at 1 + eps_high
    loss, st = per_token_loss(logp[:, :1], old[:, :1], torch.tensor([1.0]), mask[:, :1], 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.28)
    assert st.clip_high == 1.0 and st.clip_low == 0.0
    loss, _ = per_token_loss(logp[:, :1], old[:, :1], torch.tensor([1.0]), mask[:, :1], 0.2, 0.2)
    assert loss.item() == pytest.approx(-1.2)
    # negative advantage, ratio 0.5: pessimistic bound uses 1 - eps_low
    loss, st = per_token_loss(logp[:, 1:], old[:, 1:], torch.tensor([-1.0]), mask[:, 1:], 0.2, 0.28)
    assert loss.item() == pytest.approx(0.8)
    assert st.clip_low == 1.0
    # unclipped side: positive advantage with ratio 0.5 keeps the ratio (min picks 0.5)
    loss, _ = per_token_loss(logp[:, 1:], old[:, 1:], torch.tensor([1.0]), mask[:, 1:], 0.2, 0.28)
    assert loss.item() == pytest.approx(-0.5)


def test_clipped_tokens_have_no_gradient():
    logp = torch.log(torch.tensor([[1.5]])).requires_grad_()
    loss, _ = per_token_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.2)
    loss.sum().backward()
    assert logp.grad.item() == 0.0


def test_k3_kl_value_and_sign():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert kl_k3(logp, logp).item() == 0.0
    x = torch.randn(100)
    assert torch.all(kl_k3(x, torch.randn(100)) >= 0)


def test_kl_term_added_with_coefficient():
    logp = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    base, _ = per_token_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 1))
    with_kl, st = per_token_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 1), kl_coef=0.1, ref_logp=ref)
    assert (with_kl - base).item() == pytest.approx(0.1 * (0.5 - math.log(0.5) - 1))
    assert st.kl == pytest.approx(0.5 - math.log(0.5) - 1)
    with pytest.raises(ValueError):
        per_token_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 1), kl_coef=0.1)


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(5, 4, 2) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


# rows some reward scored (valid) and rows none did: group 0 has 3 valid rows, group 1 one, group 2 two equal ones
RV = torch.tensor([1.0, 0.0, float("nan"), 3.0, 2.0, float("nan"), float("nan"), 5.0, 5.0, 100.0])
GV = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
VALID = torch.tensor([True, True, False, True, True, False, False, True, True, False])


def test_unscored_rows_are_left_out_and_small_groups_get_no_advantage():
    # group 0 over its valid rows [1, 0, 3]: mean 4/3, centered [-1/3, -4/3, 5/3], sample std sqrt(7/3)
    centered = torch.tensor([-1 / 3, -4 / 3, 0, 5 / 3, 0, 0, 0, 0, 0, 0])
    assert torch.allclose(group_advantages(RV, GV, "none", valid=VALID), centered)
    assert torch.allclose(group_advantages(RV, GV, "group", eps=0.0, valid=VALID), centered / math.sqrt(7 / 3))
    # batch std over the 6 valid rewards [1, 0, 3, 2, 5, 5]: mean 8/3, squares sum 192/9, / 5 -> 8/sqrt(15)
    assert torch.allclose(group_advantages(RV, GV, "batch", eps=0.0, valid=VALID), centered / (8 / math.sqrt(15)))
    # group 1 (one valid row) and group 2 (valid rows equal) carry no signal
    assert zero_std_fraction(RV, GV, VALID) == pytest.approx(2 / 3)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_an_unscored_rows_reward_is_never_read(scale):
    other = torch.where(VALID, RV, torch.tensor(-7.0))
    a = group_advantages(RV, GV, scale, valid=VALID)
    assert torch.isfinite(a).all() and torch.equal(a, group_advantages(other, GV, scale, valid=VALID))
    assert torch.all(a[~VALID] == 0)


def test_equal_rewards_give_exactly_zero_not_a_rounding_residue():
    # mean(8 x 0.1) in float32 is not exactly 0.1: the centred rewards were ~1e-8 and, over a std of the
    # same size + eps, gave advantages of ~7e-5 in a group that carries no signal
    r = torch.full((8,), 0.1)
    for scale in ("group", "batch", "none"):
        assert torch.all(group_advantages(r, torch.zeros(8, dtype=torch.long), scale) == 0), scale


# ---------------------------------------------------------------- GSPO, CISPO, TIS (hand-computed)

def test_gspo_sequence_ratio_is_the_length_normalised_mean_over_real_tokens():
    from grpo.algorithms import sequence_log_ratio

    logp = torch.tensor([[-1.0, -1.0, -9.0]])
    old = torch.tensor([[-1.2, -1.4, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the padded third token does not count
    assert torch.allclose(sequence_log_ratio(logp, old, mask), torch.full((1, 3), 0.3))


def test_gspo_clips_the_sequence_ratio_and_its_gradient_reaches_every_token():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.4]])
    mask = torch.ones(1, 2)
    s = math.exp(0.3)  # 1.3499 > 1 + 0.28
    loss, st = per_token_loss(logp, old, torch.tensor([1.0]), mask, 0.2, 0.28, objective="gspo")
    assert torch.allclose(loss, torch.full((1, 2), -1.28))  # clipped: the same value for both tokens
    assert st.clip_high == 1.0 and st.ratio_mean == pytest.approx(s, rel=1e-5)
    normalize_loss(loss, mask, "grpo", max_completion_length=2).backward()
    assert torch.all(logp.grad == 0)  # A > 0 and s above the range: no gradient, as in PPO
    logp.grad = None
    loss, _ = per_token_loss(logp, old, torch.tensor([-1.0]), mask, 0.2, 0.28, objective="gspo")
    assert torch.allclose(loss, torch.full((1, 2), s))  # A < 0: the unclipped s A term is the larger loss
    normalize_loss(loss, mask, "grpo", max_completion_length=2).backward()
    # d s / d logp_t = s / |y| for each of the |y| = 2 tokens (the mean over tokens of a constant is s)
    assert torch.allclose(logp.grad, torch.full((1, 2), s / 2))


def test_cispo_detaches_the_clipped_weight_so_clipped_tokens_keep_a_gradient():
    logp = torch.tensor([[-1.0]], requires_grad=True)
    old = torch.tensor([[-1.5]])  # ratio e^0.5 = 1.6487, above 1.28
    loss, st = per_token_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.28, objective="cispo")
    assert loss.item() == pytest.approx(-1.28 * -1.0)
    loss.sum().backward()
    assert logp.grad.item() == pytest.approx(-1.28)  # -w A, w = 1.28 detached
    assert st.clip_high == 1.0
    ppo = torch.tensor([[-1.0]], requires_grad=True)
    per_token_loss(ppo, old, torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.28)[0].sum().backward()
    assert ppo.grad.item() == 0.0  # the PPO clip drops the same token's gradient


def test_cispo_counts_clipping_on_both_sides_whatever_the_advantage_sign():
    logp = torch.tensor([[-1.0, -2.0]])
    old = torch.tensor([[-1.5, -1.0]])  # ratios e^0.5 (above) and e^-1 = 0.37 (below 0.8)
    _, st = per_token_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), 0.2, 0.28, objective="cispo")
    assert (st.clip_low, st.clip_high) == (0.5, 0.5)


def test_truncated_is_weights_are_capped_and_detached():
    from grpo.algorithms import truncated_is_weights

    old = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    sampler = torch.tensor([[-2.0, -1.0]])
    w = truncated_is_weights(old, sampler, cap=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, math.exp(-1.0)]]))  # e^1 = 2.72 capped at 2
    assert not w.requires_grad


def test_is_weights_scale_the_surrogate_but_not_the_kl():
    logp = torch.tensor([[-1.0]])
    w = torch.tensor([[0.5]])
    base, _ = per_token_loss(logp, logp, torch.tensor([2.0]), torch.ones(1, 1))
    weighted, _ = per_token_loss(logp, logp, torch.tensor([2.0]), torch.ones(1, 1), is_weights=w)
    assert weighted.item() == pytest.approx(0.5 * base.item()) and base.item() == pytest.approx(-2.0)
    ref = torch.tensor([[-1.5]])
    kl_only, _ = per_token_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 1), kl_coef=1.0, ref_logp=ref,
                                is_weights=w)
    assert kl_only.item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)


def test_logprob_mismatch_by_hand():
    from grpo.algorithms import logprob_mismatch

    trainer = torch.tensor([[-1.0, -2.0, 5.0]])
    sampler = torch.tensor([[-1.1, -1.8, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    got = logprob_mismatch(trainer, sampler, mask)
    assert got["mean_abs"] == pytest.approx(0.15) and got["max_abs"] == pytest.approx(0.2)
    assert got["kl"] == pytest.approx(((math.exp(0.1) - 1.1) + (math.exp(-0.2) - 0.8)) / 2, rel=1e-5)  # fp32
    assert logprob_mismatch(trainer, sampler, torch.zeros(1, 3)) == {"mean_abs": 0.0, "max_abs": 0.0, "kl": 0.0}


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective must be one of"):
        per_token_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), objective="ppo")

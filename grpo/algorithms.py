"""GRPO maths as pure tensor functions (no models, no I/O, no config parsing).

The algorithm (DeepSeekMath, Shao et al. 2024, "outcome supervision" variant, as used by DeepSeek-R1):
for each prompt sample G completions, score each with rule-based rewards, and give every token of
completion i the same advantage

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)        scale_rewards = "group" (std: sample, n-1)
    A_i = (r_i - mean(r_group)) / (std(r_batch) + eps)        scale_rewards = "batch"
    A_i =  r_i - mean(r_group)                                scale_rewards = "none"  (Dr. GRPO)

over the group's scored rows (a row no reward applies to has no r_i: it is left out of mean and std, gets
A_i = 0 and is masked out of the loss); a group with fewer than 2 scored rows, or whose scored rewards are
all equal, gets A_i = 0 on every row.

The per-token objective is PPO's clipped surrogate with an asymmetric clip range (DAPO's clip-higher),
plus an optional KL penalty to a frozen reference using Schulman's k3 estimator:

    rho_t = exp(logp_t - old_logp_t)
    l_t   = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) + beta * k3_t
    k3_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1

`normalize_loss` turns per-token losses into the scalar for one micro-batch; each `loss_type` is the
normalisation its paper uses, arranged so that summing the micro-batch losses of one optimizer step
(gradient accumulation) gives exactly the full-batch loss:

    grpo     mean over tokens of each sequence, then mean over sequences      (DeepSeekMath)
    bnpo     mean over the tokens of this micro-batch, averaged over micro-batches
    dr_grpo  sum over tokens / (num sequences * max_completion_length)       (Dr. GRPO, Liu et al. 2025)
    dapo     sum over tokens / (tokens in the whole step's batch)            (DAPO, Yu et al. 2025)

`objective` picks the per-token surrogate (A: the row's advantage; sg: stop-gradient):

    ppo_clip  -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)              (above; GRPO, DAPO)
    gspo      the same with the sequence-level ratio of GSPO (Zheng et al. 2025),
              s_i = exp(mean_t (logp_t - old_logp_t)), in place of rho_t for every token of row i;
              the gradient of s_i reaches every token of the row (GSPO's, not GSPO-token's, estimator)
    cispo     -sg(clip(rho_t, 1 - eps_low, 1 + eps_high)) A logp_t                  (CISPO, MiniMax-M1 2025):
              the IS weight is clipped and detached, so clipped tokens still get a gradient

Sampler/trainer mismatch: the sampler's log-probs (`sampler_logp`, bf16 engine) differ from the trainer's
(`old_logp`). Truncated importance sampling (TIS, Yao et al. 2025) multiplies every token's surrogate by
w_t = sg(min(exp(old_logp_t - sampler_logp_t), cap)); `logprob_mismatch` measures the gap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
OBJECTIVES = ("ppo_clip", "gspo", "cispo")
SCALE_REWARDS = ("group", "batch", "none")


def _groups(rewards: torch.Tensor, group: torch.Tensor, valid: torch.Tensor | None):
    """Per-group statistics over valid rows: (rewards with invalid rows set to 0, valid [N], inverse index
    [N] into the k groups, valid count [k], mean [k], signal [k]: at least 2 valid rows, not all equal)."""
    valid = torch.ones(rewards.shape, dtype=torch.bool) if valid is None else valid.bool()
    r = torch.where(valid, rewards.float(), 0.0)
    _, inv = torch.unique(group, return_inverse=True)
    k = int(inv.max().item()) + 1 if inv.numel() else 0
    count = torch.zeros(k).index_add_(0, inv, valid.float())
    mean = torch.zeros(k).index_add_(0, inv, r) / count.clamp(min=1)
    hi = torch.full((k,), -math.inf).scatter_reduce(0, inv, torch.where(valid, r, -math.inf), "amax")
    lo = torch.full((k,), math.inf).scatter_reduce(0, inv, torch.where(valid, r, math.inf), "amin")
    return r, valid, inv, count, mean, (count >= 2) & (hi > lo)


def group_advantages(rewards: torch.Tensor, group: torch.Tensor, scale: str = "group",
                     eps: float = 1e-4, batch_std: torch.Tensor | float | None = None,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """Group-relative advantages. rewards: [N] float; group: [N] long group id of each row. Returns [N].

    valid: [N] bool, the rows some reward scored (None: all). A group's mean and std are over its valid
    rows only, and an invalid row's reward is never read (it may be NaN); it gets advantage 0 (the trainer
    also masks it out of the loss). A group with fewer than 2 valid rows has no baseline to compare
    against and gets advantage 0 on every row, as does a group whose valid rewards are all equal (exactly
    0, not a rounding residue). Groups may have different sizes.
    scale="batch" divides by the std of the whole batch's valid rewards: `batch_std` when given (the
    trainer passes the std of the rewards gathered from all processes), else the std of `rewards[valid]`.
    """
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale!r}")
    r, valid, inv, count, mean, signal = _groups(rewards, group, valid)
    centered = torch.where(valid & signal[inv], r - mean[inv], 0.0)
    if scale == "none":
        return centered
    if scale == "batch":
        if batch_std is None:
            batch_std = r[valid].std() if int(valid.sum()) > 1 else torch.tensor(0.0)
        return centered / (torch.as_tensor(batch_std, dtype=torch.float32) + eps)
    sq = torch.zeros(len(count)).index_add_(0, inv, centered ** 2)
    std = torch.where(signal, torch.sqrt(sq / (count - 1).clamp(min=1)), 1.0)  # 1: no 0/0 where eps = 0
    return centered / (std[inv] + eps)


def zero_std_fraction(rewards: torch.Tensor, group: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Share of groups that carry no learning signal: fewer than 2 valid rows, or all their valid rewards
    equal (`valid` as in `group_advantages`)."""
    if len(group) == 0:
        return 0.0
    return float(1.0 - _groups(rewards, group, valid)[-1].float().mean())


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference), per token; >= 0, unbiased."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


@dataclass
class LossStats:
    """Per-micro-batch diagnostics (token means over the mask); floats, or 0-dim tensors from
    `per_token_loss(as_tensors=True)`."""

    clip_low: float      # share of tokens with A < 0 and rho < 1 - eps_low (lower clip active)
    clip_high: float     # share of tokens with A > 0 and rho > 1 + eps_high (upper clip active)
    ratio_mean: float
    kl: float


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's length-normalised sequence log-ratio, log s_i = mean over row i's tokens of (logp - old_logp),
    broadcast to every token: [N, T] -> [N, T]. Differentiable through every token of the row."""
    m = mask.float()
    per_row = ((logp - old_logp) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    return per_row.unsqueeze(1).expand_as(logp)


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip_eps_low: float,
                      clip_eps_high: float) -> torch.Tensor:
    """-min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A), elementwise; adv broadcasts to ratio."""
    clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high)
    return -torch.min(ratio * adv, clipped * adv)


def cispo_surrogate(logp: torch.Tensor, ratio: torch.Tensor, adv: torch.Tensor, clip_eps_low: float,
                    clip_eps_high: float) -> torch.Tensor:
    """-sg(clip(ratio, 1 - eps_low, 1 + eps_high)) A logp, elementwise (CISPO)."""
    weight = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high).detach()
    return -weight * adv * logp


def truncated_is_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """TIS weights min(exp(old_logp - sampler_logp), cap), detached: [N, T]. old_logp is the trainer's
    log-prob of the sampled token before the update, sampler_logp the sampler's."""
    return torch.exp(old_logp.detach() - sampler_logp).clamp(max=cap).detach()


def logprob_mismatch(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the sampler's log-probs are from the trainer's on the same tokens (token means over mask):
    mean and max |difference|, and the k3 estimate of KL(sampler || trainer) (samples come from the
    sampler, so E_sampler[exp(d) - d - 1], d = trainer - sampler)."""
    m = mask.float() > 0
    if not bool(m.any()):
        return {"mean_abs": 0.0, "max_abs": 0.0, "kl": 0.0}
    d = (trainer_logp.float() - sampler_logp.float())[m]
    return {"mean_abs": float(d.abs().mean()), "max_abs": float(d.abs().max()),
            "kl": float((torch.exp(d) - d - 1).mean())}


def per_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   clip_eps_low: float = 0.2, clip_eps_high: float = 0.2, kl_coef: float = 0.0,
                   ref_logp: torch.Tensor | None = None, as_tensors: bool = False, objective: str = "ppo_clip",
                   is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, LossStats]:
    """Per-token loss of `objective` (module docstring) (+ k3 KL). logp, old_logp, ref_logp, mask,
    is_weights: [N, T]; advantages: [N]. `is_weights` (TIS) multiply the surrogate, not the KL term.
    `as_tensors`: the stats as 0-dim tensors on logp's device (no host sync; the trainer reads them once
    per step) instead of floats. Clip shares count the tokens whose ratio (the sequence ratio for gspo)
    lies outside [1 - eps_low, 1 + eps_high] on the side the clip acts on (cispo: either side)."""
    adv = advantages.unsqueeze(1)
    if objective == "gspo":
        ratio = torch.exp(sequence_log_ratio(logp, old_logp, mask))
    elif objective in ("ppo_clip", "cispo"):
        ratio = torch.exp(logp - old_logp)
    else:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "cispo":
        loss = cispo_surrogate(logp, ratio, adv, clip_eps_low, clip_eps_high)
    else:
        loss = clipped_surrogate(ratio, adv, clip_eps_low, clip_eps_high)
    if is_weights is not None:
        loss = loss * is_weights
    kl = torch.zeros_like(logp)
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp")
        kl = kl_k3(logp, ref_logp)
        loss = loss + kl_coef * kl
    with torch.no_grad():
        m = mask.float()
        n = m.sum().clamp(min=1)
        below, above = ratio < 1 - clip_eps_low, ratio > 1 + clip_eps_high
        if objective != "cispo":  # the PPO clip only binds on the side where it lowers the objective
            below, above = below & (adv < 0), above & (adv > 0)
        parts = [(below.float() * m).sum() / n, (above.float() * m).sum() / n, (ratio * m).sum() / n,
                 (kl * m).sum() / n]
        stats = LossStats(*(parts if as_tensors else [float(x) for x in parts]))
    return loss, stats


def normalize_loss(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, *, max_completion_length: int,
                   global_seqs: int | None = None, global_tokens: float | None = None,
                   num_micro_batches: int = 1) -> torch.Tensor:
    """Scalar loss of one micro-batch. per_token, mask: [n, T] for the n rows of this micro-batch.

    global_seqs / global_tokens: sequences / completion tokens in the whole optimizer step (all micro-batches
    and processes); default to this micro-batch's own. num_micro_batches: used by bnpo's average.
    """
    m = mask.float()
    total = (per_token * m).sum()
    n_seqs = max(global_seqs if global_seqs is not None else per_token.shape[0], 1)  # 0: every row masked
    if loss_type == "grpo":
        per_seq = (per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return per_seq.sum() / n_seqs
    if loss_type == "bnpo":
        return total / m.sum().clamp(min=1) / num_micro_batches
    if loss_type == "dr_grpo":
        return total / (n_seqs * max_completion_length)
    if loss_type == "dapo":
        tokens = global_tokens if global_tokens is not None else float(m.sum())
        return total / max(tokens, 1.0)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)

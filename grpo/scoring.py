"""Scoring rollouts with the configured rewards (shared by training, evaluation and rejection sampling)."""
from __future__ import annotations

from grpo.data.records import Example, reward_columns
from grpo.rollout import RolloutBatch, real_token_rows
from grpo.rewards.registry import LoadedReward, RewardTable, score


def score_rollout(rewards: list[LoadedReward], examples: list[Example], chats: list[list[dict]],
                  rollout: RolloutBatch, assistant_prefix: str = "") -> RewardTable:
    """Score the N = len(examples) * G rows of `rollout` (row i belongs to examples[rollout.group[i]]).

    Reward functions receive chat prompts and chat completions (TRL's conversational convention); the
    assistant prefix, if the template prefills one, is part of the completion they see.
    """
    rows = rollout.group.tolist()
    row_examples = [examples[g] for g in rows]
    prompts = [chats[g] for g in rows]
    completions = [[{"role": "assistant", "content": assistant_prefix + t}] for t in rollout.texts]
    ids = getattr(rollout.texts, "token_rows", None)  # LazyTexts has them already
    if ids is None:
        ids = real_token_rows(rollout.completion_ids, rollout.completion_mask)
    return score(rewards, prompts, completions, ids, reward_columns(row_examples))

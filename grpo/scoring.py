"""Scoring rollouts with the configured rewards (shared by training, evaluation and rejection sampling)."""
from __future__ import annotations

from grpo.data.records import Example, reward_columns
from grpo.data.templates import is_conversational
from grpo.rollout import RolloutBatch, real_token_rows
from grpo.rewards.registry import LoadedReward, RewardTable, score


def reward_inputs(examples: list[Example], chats: list[list[dict]], group: list[int], texts: list[str],
                  template: str, assistant_prefix: str = "") -> tuple[list, list]:
    """(prompts, completions) for the reward functions, one per row (row i belongs to examples[group[i]]),
    in the form TRL passes for the template's dataset format: strings for `plain` (standard), chat messages
    for the chat templates (conversational). The prefilled assistant prefix is part of each completion."""
    if is_conversational(template):
        return ([chats[g] for g in group],
                [[{"role": "assistant", "content": assistant_prefix + t}] for t in texts])
    return [examples[g].prompt for g in group], [assistant_prefix + t for t in texts]


def score_rollout(rewards: list[LoadedReward], examples: list[Example], chats: list[list[dict]],
                  rollout: RolloutBatch, assistant_prefix: str, template: str) -> RewardTable:
    """Score the N = len(examples) * G rows of `rollout` (row i belongs to examples[rollout.group[i]])."""
    rows = rollout.group.tolist()
    prompts, completions = reward_inputs(examples, chats, rows, list(rollout.texts), template, assistant_prefix)
    ids = getattr(rollout.texts, "token_rows", None)  # LazyTexts has them already
    if ids is None:
        ids = real_token_rows(rollout.completion_ids, rollout.completion_mask)
    return score(rewards, prompts, completions, ids, reward_columns([examples[g] for g in rows]))

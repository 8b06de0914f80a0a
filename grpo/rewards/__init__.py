"""Rule-based reward functions for GRPO (no torch needed). See grpo.rewards.registry for the call convention."""
from grpo.rewards.registry import (BUILTIN_REWARDS, LoadedReward, RewardError, RewardSpec, RewardTable, as_text,
                              available_rewards, load_rewards, register_reward, resolve_reward, score)

__all__ = ["BUILTIN_REWARDS", "LoadedReward", "RewardError", "RewardSpec", "RewardTable", "as_text",
           "available_rewards", "load_rewards", "register_reward", "resolve_reward", "score"]

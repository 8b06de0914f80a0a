"""Datasets for GRPO: the Example record, task adapters, generators and prompt templates (no torch needed)."""
from data.records import Example, reward_columns

__all__ = ["Example", "reward_columns"]

r"""Format rewards for the R1 output layout ``<think>…</think><answer>…</answer>``.

`format_reward` is strict, unlike the regex popular in open-r1 (which accepts text after the answer
and two answer blocks): 1.0 iff the completion is, after optional leading whitespace, exactly one
``<think>…</think>`` followed (whitespace allowed in between) by exactly one ``<answer>…</answer>``,
with nothing but whitespace after ``</answer>``. Tags are case-sensitive.

`tag_count_reward` is the dense version: 0.25 for each of the four tags present exactly once.

Both take ``prefix``: text the chat template already put at the start of the assistant turn (e.g.
``"<think>"`` when the prompt ends with it), prepended before checking.
"""
from __future__ import annotations

import re

from grpo.rewards.registry import as_text

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_STRICT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


def is_strict_format(text: str) -> bool:
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    return _STRICT.fullmatch(text) is not None


def format_reward(prompts, completions, prefix: str = "", **kwargs) -> list[float]:
    """1.0 if the completion follows the strict layout above, else 0.0."""
    return [1.0 if is_strict_format(prefix + as_text(c)) else 0.0 for c in completions]


def tag_count_reward(prompts, completions, prefix: str = "", **kwargs) -> list[float]:
    """0.25 per tag of <think>, </think>, <answer>, </answer> that appears exactly once."""
    out = []
    for c in completions:
        text = prefix + as_text(c)
        out.append(sum(0.25 for tag in TAGS if text.count(tag) == 1))
    return out

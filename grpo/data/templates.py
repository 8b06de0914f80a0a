"""Prompt templates: turn an Example into chat messages, and chat messages into model input.

`r1_zero` follows DeepSeek-R1-Zero's instruction: reason inside <think>…</think>, then give the final
answer inside <answer>…</answer>. The instruction goes into the system message so the user message is
the bare question (chat models keep their own chat template; no model-specific text here).

Which form reward functions see (TRL's dataset formats, `grpo.rewards.registry`): `plain` is TRL's
"standard" format, prompts and completions are strings; the other templates are "conversational",
prompts are the chat messages below and completions ``[{"role": "assistant", "content": ...}]``.
"""
from __future__ import annotations

from typing import Any

from grpo.data.records import Example

R1_ZERO_SYSTEM = (
    "Solve the user's problem. First think about it inside <think> </think> tags, then give only the "
    "final answer inside <answer> </answer> tags, e.g. <think> reasoning </think><answer>42</answer>."
)
CODE_SYSTEM = (
    "You are a helpful programming assistant. Think about the problem inside <think> </think> tags, then "
    "give your complete solution as one Python code block inside <answer> </answer> tags."
)
BOXED_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."

TEMPLATES = ("r1_zero", "boxed", "plain")
CONVERSATIONAL = ("r1_zero", "boxed")     # rewards get chat messages; the others get strings


def is_conversational(template: str) -> bool:
    """True when reward functions get chat messages for this template (TRL's conversational format)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template '{template}'; known: {', '.join(TEMPLATES)}")
    return template in CONVERSATIONAL


def to_messages(example: Example, template: str = "r1_zero") -> list[dict[str, str]]:
    """Chat messages for one Example (system + user)."""
    if template == "r1_zero":
        system = CODE_SYSTEM if example.task in ("code", "humaneval", "mbpp") else R1_ZERO_SYSTEM
        return [{"role": "system", "content": system}, {"role": "user", "content": example.prompt}]
    if template == "boxed":
        return [{"role": "user", "content": example.prompt + BOXED_SUFFIX}]
    if template == "plain":
        return [{"role": "user", "content": example.prompt}]
    raise ValueError(f"unknown prompt template '{template}'; known: {', '.join(TEMPLATES)}")


def render(tokenizer: Any, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
    """Apply the tokenizer's chat template (generation prompt added), then an optional assistant prefix."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # base models without a chat template: a plain transcript
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant: "
    return text + assistant_prefix

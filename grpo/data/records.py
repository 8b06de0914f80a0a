"""The one record shape every dataset adapter and generator produces.

`data/` never imports torch or `grpo/`: an adapter is usable alone (in an eval script, say).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One task instance.

    id:      stable, unique within its dataset (deterministic across runs with the same seed).
    task:    task type used to route rewards: "arithmetic", "gsm8k", "math", "countdown", "code", ...
    prompt:  the question as plain text (templates turn it into chat messages / model input).
    answer:  gold answer as a string (math-like tasks), or None.
    tests:   for code tasks: {"asserts": [str, ...]} and/or {"io": [{"input": str, "output": str}, ...]},
             optionally "entry_point" / "setup"; None otherwise.
    meta:    anything else an adapter wants to keep (difficulty, source, rationale, ...).
             Keys are passed to reward functions as extra keyword columns.
    """

    id: str
    task: str
    prompt: str
    answer: str | None = None
    tests: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        return cls(id=str(d["id"]), task=str(d["task"]), prompt=d["prompt"], answer=d.get("answer"),
                   tests=d.get("tests"), meta=dict(d.get("meta") or {}))


def reward_columns(examples: list[Example]) -> dict[str, list[Any]]:
    """Dataset columns handed to reward functions as keyword lists (TRL convention).

    Always: answer, tests, task, id. Plus every meta key that appears in any example (None where absent).
    """
    cols: dict[str, list[Any]] = {
        "answer": [e.answer for e in examples],
        "tests": [e.tests for e in examples],
        "task": [e.task for e in examples],
        "id": [e.id for e in examples],
    }
    meta_keys = sorted({k for e in examples for k in e.meta} - set(cols) - {"prompts", "completions", "completion_ids"})
    for k in meta_keys:
        cols[k] = [e.meta.get(k) for e in examples]
    return cols

"""Cold-start SFT data (DeepSeek-R1 stage 1): worked solutions rewritten as R1 targets
`<think>\\n{reasoning}\\n</think>\\n<answer>{answer}</answer>`.

Output: the input `Example`s with the target text in `meta["completion"]`, so the SFT stage renders
the prompt with the same `grpo.data.templates` as GRPO and trains on the completion; `to_records` gives the
flat prompt/completion dicts (TRL's "prompt-completion" format) for a jsonl file.

Where the reasoning comes from, per task:
  gsm8k       the rationale before '####', calculator annotations `<<48/2=24>>` removed
  math        the reference solution
  arithmetic  a step-by-step evaluation of meta["expression"] (precedence respected)
  countdown   the gold solution, evaluated step by step; the answer is the expression itself
Examples without a worked solution (other tasks, arithmetic word problems) are skipped.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from grpo.data import DataError, load_examples
from grpo.data.expressions import reduction_steps
from grpo.data.records import Example

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def r1_target(reasoning: str, answer: str) -> str:
    """The one place that fixes the cold-start output format."""
    return f"<think>\n{reasoning.strip()}\n</think>\n<answer>{answer.strip()}</answer>"


def strip_calculator_annotations(text: str) -> str:
    """'48/2 = <<48/2=24>>24 clips' -> '48/2 = 24 clips'."""
    return _CALCULATOR.sub("", text)


def gsm8k_reasoning(rationale: str) -> str:
    lines = (line.strip() for line in strip_calculator_annotations(rationale).splitlines())
    return "\n".join(line for line in lines if line)


def arithmetic_reasoning(expression: str) -> str:
    """'3 + 4 * 5' -> 'We evaluate 3 + 4 * 5 ... \\n4 * 5 = 20, so the expression becomes 3 + 20.\\n3 + 20 = 23.'"""
    steps = reduction_steps(expression)
    if not steps:
        return f"The expression {expression.strip()} is already a number."
    lines = [f"We evaluate {expression.strip()}, doing * and / before + and -, and going left to right."
             if len(steps) > 1 else f"We evaluate {expression.strip()}."]
    for op_text, value, rest in steps[:-1]:
        lines.append(f"{op_text} = {value}, so the expression becomes {rest}.")
    op_text, value, _ = steps[-1]
    lines.append(f"{op_text} = {value}.")
    return "\n".join(lines)


def countdown_reasoning(numbers: list[int], target: int, solution: str) -> str:
    lines = [f"I need to combine {', '.join(map(str, numbers))} to get {target}. Let me try {solution}."]
    for op_text, value, _ in reduction_steps(solution):
        lines.append(f"{op_text} = {value}")
    lines.append(f"That uses each number once and gives {target}.")
    return "\n".join(lines)


def completion_for(example: Example) -> str | None:
    """The R1 target for one Example, or None when it has no worked solution to rewrite."""
    meta = example.meta
    if example.task == "gsm8k" and meta.get("rationale") and example.answer is not None:
        return r1_target(gsm8k_reasoning(meta["rationale"]), example.answer)
    if example.task == "math" and meta.get("solution") and example.answer is not None:
        return r1_target(meta["solution"], example.answer)
    if example.task == "arithmetic" and meta.get("expression") and example.answer is not None:
        return r1_target(arithmetic_reasoning(meta["expression"]), example.answer)
    if example.task == "countdown" and meta.get("solution"):
        return r1_target(countdown_reasoning(meta["numbers"], meta["target"], meta["solution"]), meta["solution"])
    return None


def build(examples: Iterable[Example]) -> list[Example]:
    """Examples with meta["completion"] set; those without a worked solution are dropped."""
    out = []
    for ex in examples:
        completion = completion_for(ex)
        if completion is not None:
            out.append(Example(id=ex.id, task=ex.task, prompt=ex.prompt, answer=ex.answer, tests=ex.tests,
                               meta={**ex.meta, "completion": completion}))
    if not out:
        raise DataError("cold start: none of the examples has a worked solution "
                        "(supported: gsm8k, math, arithmetic with meta['expression'], countdown)")
    return out


def load(dataset: str = "arithmetic", **options: Any) -> list[Example]:
    """`load_examples("cold_start", dataset="gsm8k", path=..., split="train")`: any source, then `build`."""
    if dataset == "cold_start":
        raise DataError("cold_start: dataset must name another source, e.g. 'gsm8k' or 'arithmetic'")
    return build(load_examples(dataset, **options))


def to_records(examples: Iterable[Example]) -> list[dict[str, Any]]:
    """Flat {id, task, prompt, completion, answer} dicts (prompt is the plain question, not a chat)."""
    return [{"id": ex.id, "task": ex.task, "prompt": ex.prompt, "completion": ex.meta["completion"],
             "answer": ex.answer} for ex in examples]


def write_jsonl(examples: Iterable[Example], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in to_records(examples):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path

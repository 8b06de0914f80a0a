"""Countdown tasks as in TinyZero: reach a target from a few numbers with + - * /, each number used once.

Every task is solvable by construction: the generator combines the numbers pairwise at random (as in
the game, every intermediate result is a positive integer; division only when exact) and the final
value becomes the target. The expression it built is kept as the gold solution in meta["solution"].

`check_countdown(expression, numbers, target)` is the pure verifier a reward uses: the expression is
parsed with `ast` (no eval), must use exactly the given numbers (each once), and must equal the target
exactly (rational arithmetic, so `(8 / 3) * 3` is exactly 8).
"""
from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction
from typing import Iterable, Sequence

from grpo.data import DataError
from grpo.data.expressions import ExpressionError, binop, evaluate, literals, number, parse, to_text
from grpo.data.records import Example


def check_countdown(expression: str, numbers: Sequence[int], target: int | str) -> bool:
    """True when `expression` uses each of `numbers` exactly once, only + - * / and parentheses, and
    equals `target`. A trailing "= <target>" is tolerated. Never raises on model text."""
    if not isinstance(expression, str):
        return False
    text = expression.strip()
    if text.count("=") == 1:
        text, rhs = (part.strip() for part in text.split("="))
        if rhs != str(target).strip():
            return False
    try:
        goal = Fraction(str(target).strip())
        tree = parse(text)
        if Counter(literals(tree)) != Counter(int(n) for n in numbers):
            return False
        return evaluate(tree) == goal
    except (ExpressionError, ZeroDivisionError, ValueError, TypeError, RecursionError):
        return False


def _combine(r: random.Random, items: list[tuple[int, object]], max_value: int) -> bool:
    """Merge two random (value, expression) items in place with a random allowed operation; False if no
    operation keeps the value a positive integer <= max_value."""
    i, j = r.sample(range(len(items)), 2)
    (a, ea), (b, eb) = items[i], items[j]
    if a < b:
        (a, ea), (b, eb) = (b, eb), (a, ea)
    options = [("+", a + b), ("*", a * b)]
    if a > b:
        options.append(("-", a - b))
    if b > 1 and a % b == 0:
        options.append(("/", a // b))
    options = [(op, v) for op, v in options if v <= max_value]
    if not options:
        return False
    op, value = r.choice(options)
    for k in sorted((i, j), reverse=True):
        items.pop(k)
    items.append((value, binop(op, ea, eb)))
    return True


def make_task(r: random.Random, count: int, min_number: int, max_number: int, min_target: int, max_target: int,
              max_tries: int = 1000) -> tuple[list[int], int, str]:
    """(numbers in shuffled order, target, gold solution expression) for one solvable task."""
    for _ in range(max_tries):
        numbers = [r.randint(min_number, max_number) for _ in range(count)]
        items: list[tuple[int, object]] = [(n, number(n)) for n in numbers]
        while len(items) > 1 and _combine(r, items, max_value=max(max_target, max_number) * max_number):
            pass
        if len(items) == 1 and min_target <= items[0][0] <= max_target:
            r.shuffle(numbers)
            return numbers, items[0][0], to_text(items[0][1])
    raise DataError(f"countdown: found no task with {count} numbers in [{min_number}, {max_number}] and a target "
                    f"in [{min_target}, {max_target}] after {max_tries} tries; widen the ranges")


def prompt_for(numbers: Sequence[int], target: int) -> str:
    return (f"Using the numbers {list(numbers)}, create an expression that equals {target}. You may use +, -, * "
            f"and / with parentheses, and must use each number exactly once.")


def load(n: int = 1000, seed: int = 0, num_count: int | Iterable[int] = (3, 4), min_number: int = 1,
         max_number: int = 99, min_target: int = 1, max_target: int = 100) -> list[Example]:
    """n distinct countdown tasks; the same arguments always give the same tasks.

    num_count: how many numbers per task, one value or a list drawn uniformly ((3, 4) = three or four).
    Example: answer = str(target); meta = {"numbers": [...], "target": int, "solution": "<expression>"}.
    """
    counts = [num_count] if isinstance(num_count, int) else list(num_count)
    if n <= 0:
        raise DataError(f"countdown n must be positive, got {n}")
    if not counts or any(c < 2 for c in counts):
        raise DataError(f"countdown num_count must be integers >= 2, got {num_count}")
    if not 0 < min_number <= max_number or not 0 < min_target <= max_target:
        raise DataError(f"countdown ranges must be positive and ordered: numbers [{min_number}, {max_number}], "
                        f"target [{min_target}, {max_target}]")
    r = random.Random(seed)
    seen: set[tuple[tuple[int, ...], int]] = set()
    out: list[Example] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise DataError(f"countdown: only {len(out)} distinct tasks found for n={n}; widen the ranges")
        numbers, target, solution = make_task(r, r.choice(counts), min_number, max_number, min_target, max_target)
        key = (tuple(sorted(numbers)), target)
        if key in seen:
            continue
        seen.add(key)
        out.append(Example(id=f"countdown-s{seed}-{len(out):05d}", task="countdown", prompt=prompt_for(numbers, target),
                           answer=str(target),
                           meta={"numbers": numbers, "target": target, "solution": solution, "source": "countdown"}))
    return out

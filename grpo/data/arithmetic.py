"""Seeded generator of arithmetic tasks with gold answers: the embedded default dataset.

Difficulty levels (answers are always integers; division appears only where it is exact):
  1  a + b or a - b, operands 1..20
  2  a * b with one factor 2..9 and the other 2..12, or a + b with operands 10..99
  3  two operations with precedence: a + b * c, a * b - c, (a + b) * c
  4  three operations with parentheses and exact division: (a + b) * c - d, (a * b + c) / d, ...
  5  one- or two-step word problems built from levels 1-3 ("Tom has 12 apples ...")

The same (seed, n, difficulty) always yields the same tasks; held-out sets use another seed and are
deduplicated against nothing here (use disjoint seeds; `load_examples` deduplicates by prompt).
"""
from __future__ import annotations

import random
from typing import Iterable

from grpo.data.records import Example

_NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Maya", "Ivan", "Zoe", "Ken", "Lena"]
_ITEMS = ["apples", "books", "coins", "pencils", "marbles", "stickers", "cards", "shells"]


def _level1(r: random.Random) -> tuple[str, int]:
    a, b = r.randint(1, 20), r.randint(1, 20)
    if r.random() < 0.5:
        return f"{a} + {b}", a + b
    a, b = max(a, b), min(a, b)
    return f"{a} - {b}", a - b


def _level2(r: random.Random) -> tuple[str, int]:
    if r.random() < 0.5:
        a, b = r.randint(2, 9), r.randint(2, 12)
        return f"{a} * {b}", a * b
    a, b = r.randint(10, 99), r.randint(10, 99)
    return f"{a} + {b}", a + b


def _level3(r: random.Random) -> tuple[str, int]:
    a, b, c = r.randint(2, 20), r.randint(2, 9), r.randint(2, 9)
    kind = r.randrange(3)
    if kind == 0:
        return f"{a} + {b} * {c}", a + b * c
    if kind == 1:
        c = r.randint(1, b * c)
        return f"{b} * {a} - {c}", b * a - c
    return f"({a} + {b}) * {c}", (a + b) * c


def _level4(r: random.Random) -> tuple[str, int]:
    a, b, c = r.randint(2, 20), r.randint(2, 20), r.randint(2, 9)
    if r.random() < 0.5:
        d = r.randint(1, (a + b) * c)
        return f"({a} + {b}) * {c} - {d}", (a + b) * c - d
    d = r.randint(2, 9)
    q = r.randint(2, 20)
    total = q * d  # make (a * b + c) divisible by d: pick c to fill the gap
    a, b = r.randint(2, 9), r.randint(2, 9)
    c = total - a * b
    if c <= 0:
        return f"({a} * {b}) + {q}", a * b + q
    return f"({a} * {b} + {c}) / {d}", q


def _word(r: random.Random) -> tuple[str, int]:
    name, item = r.choice(_NAMES), r.choice(_ITEMS)
    a, b, c = r.randint(5, 40), r.randint(2, 15), r.randint(2, 6)
    kind = r.randrange(4)
    if kind == 0:
        return f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?", a + b
    if kind == 1:
        a = max(a, b + 1)
        return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    if kind == 2:
        return f"{name} buys {c} bags with {b} {item} in each bag. How many {item} is that in total?", b * c
    return (f"{name} has {a} {item}, then buys {c} packs of {b} {item}. How many {item} does {name} have?",
            a + b * c)


_LEVELS = {1: _level1, 2: _level2, 3: _level3, 4: _level4, 5: _word}


def generate(n: int, seed: int = 0, difficulty: int | Iterable[int] = (1, 2, 3)) -> list[Example]:
    """n tasks; `difficulty` is one level or a list of levels drawn uniformly per task."""
    levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    bad = [lv for lv in levels if lv not in _LEVELS]
    if bad or not levels:
        raise ValueError(f"arithmetic difficulty must be among {sorted(_LEVELS)}, got {levels}")
    if n <= 0:
        raise ValueError(f"arithmetic n must be positive, got {n}")
    r = random.Random(seed)
    out = []
    for i in range(n):
        level = r.choice(levels)
        text, value = _LEVELS[level](r)
        prompt = text if level == 5 else f"What is {text}?"
        out.append(Example(id=f"arith-s{seed}-{i:05d}", task="arithmetic", prompt=prompt, answer=str(value),
                           meta={"difficulty": level, "expression": text if level != 5 else None}))
    return out


def load(n: int = 1000, seed: int = 0, difficulty: int | list[int] = (1, 2, 3)) -> list[Example]:
    """`data.load_examples("arithmetic", n=..., seed=..., difficulty=...)` entry point."""
    return generate(n=n, seed=seed, difficulty=difficulty)

"""Reward throughput benchmark: ``python -m grpo.rewards.bench [--n 20000] [--latex-n 1000] [--code-n 32] [--sandbox]``.

Prints checks/s for math verification on GSM8K-style completions (plain numbers: the fast path),
on LaTeX-style answers (the bounded sympy helper), and for the code reward (sandboxed runs, default
parallelism), with the slowest single check of each. Every pair is distinct and the verifier's cache
is cleared first, so no number comes from the cache.
"""
from __future__ import annotations

import argparse
import random
import time

from grpo.rewards import bench_sandbox
from grpo.rewards.code import code_reward, default_workers
from grpo.rewards.math import DEFAULT_TIMEOUT_S, _verify_cached, accuracy_reward

_LATEX = [
    (r"\frac{{{a}}}{{{b}}}", r"\frac{{{ka}}}{{{kb}}}"),
    (r"{a}\sqrt{{{b}}}", r"\sqrt{{{a2b}}}"),
    (r"({a}, {b}]", r"({a},{b}]"),
    (r"\{{{a}, {b}\}}", r"\{{{b},{a}\}}"),
    (r"x^2 + {s}x + {p}", r"(x+{a})(x+{b})"),
    (r"{a}\pi", r"\pi \cdot {a}"),
    (r"\frac{{\sqrt{{{b}}}}}{{{b}}}", r"\frac{{1}}{{\sqrt{{{b}}}}}"),
    (r"y = {a}x + {b}", r"y={b}+{a}x"),
]


def _gsm8k_batch(n: int, rng: random.Random):
    golds, completions, expected = [], [], []
    for i in range(n):
        gold = rng.randint(1, 10 ** 6)
        pred = gold if rng.random() < 0.5 else gold + rng.randint(1, 9)
        style = i % 3
        text = (f"<think>adding things up step {i}</think><answer>{pred:,}</answer>" if style == 0 else
                f"Let me compute. So the total is {pred}.\n#### {pred}" if style == 1 else
                f"The answer is {pred}.")
        golds.append(str(gold))
        completions.append(text)
        expected.append(pred == gold)
    return golds, completions, expected


def _latex_batch(n: int, rng: random.Random):
    golds, completions = [], []
    for i in range(n):
        a, b, k = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9)
        g, p = _LATEX[i % len(_LATEX)]
        vals = dict(a=a, b=b, ka=k * a, kb=k * b, a2b=a * a * b, s=a + b, p=a * b)
        golds.append(g.format(**vals))
        completions.append("<think>...</think><answer>$" + p.format(**vals) + "$</answer>")
    return golds, completions, [True] * n


def bench_math(golds, completions, expected) -> tuple[float, float, int]:
    """(checks/s, slowest single check in s, wrong verdicts), one check at a time on this thread."""
    _verify_cached.cache_clear()
    slowest, wrong = 0.0, 0
    t0 = time.perf_counter()
    for gold, completion, exp in zip(golds, completions, expected):
        t = time.perf_counter()
        wrong += (accuracy_reward(None, [completion], answer=[gold])[0] == 1.0) != exp
        slowest = max(slowest, time.perf_counter() - t)
    return len(golds) / (time.perf_counter() - t0), slowest, wrong


def bench_code(n: int) -> tuple[float, float, list]:
    tests = {"asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"],
             "io": [{"input": "2 3\n", "output": "5\n"}]}
    body = "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    print(add(*map(int, input().split())))\n"
    completions = ["```python\n" + body + "```"] * n
    t0 = time.perf_counter()
    scores = code_reward(None, completions, tests=[tests] * n)
    dt = time.perf_counter() - t0
    return n / dt, dt, scores


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="GSM8K-style checks")
    ap.add_argument("--latex-n", type=int, default=1000, help="LaTeX-style checks")
    ap.add_argument("--code-n", type=int, default=32, help="code completions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sandbox", action="store_true", help="only the sandbox throughput section")
    ap.add_argument("--sandbox-n", type=int, default=48, help="programs per worker count (sandbox section)")
    args = ap.parse_args(argv)
    if args.sandbox:
        return bench_sandbox.report(args.sandbox_n)
    rng = random.Random(args.seed)
    bench_math(*_latex_batch(8, rng))  # start the sympy helper outside the timing
    rate, slowest, wrong = bench_math(*_gsm8k_batch(args.n, rng))
    print(f"math GSM8K-style  : {args.n:6d} checks  {rate:9.0f} checks/s  slowest {slowest * 1e3:7.2f} ms  "
          f"wrong verdicts {wrong}")
    rate, slowest, wrong = bench_math(*_latex_batch(args.latex_n, rng))
    print(f"math LaTeX-style  : {args.latex_n:6d} checks  {rate:9.0f} checks/s  slowest {slowest * 1e3:7.2f} ms  "
          f"wrong verdicts {wrong}  (timeout {DEFAULT_TIMEOUT_S:.0f} s per check)")
    rate, total, scores = bench_code(args.code_n)
    print(f"code (4 tests each): {args.code_n:4d} completions  {rate:7.1f} completions/s  "
          f"({4 * rate:.1f} tests/s, {default_workers()} workers)  total {total:.1f} s  "
          f"all passed: {all(s == 1.0 for s in scores)}")
    bench_sandbox.report(args.sandbox_n)


if __name__ == "__main__":
    main()

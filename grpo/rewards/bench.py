"""Reward benchmark: ``python -m grpo.rewards.bench [--only math|labelled|code|sandbox] [--n 20000] [--latex-n 1000]
[--code-n 32] [--sandbox-n 48]`` (``--sandbox`` is ``--only sandbox``).

Prints checks/s for math verification on GSM8K-style completions (plain numbers: the fast path),
on LaTeX-style answers (the bounded sympy helper), and for the code reward (sandboxed runs, default
parallelism), with the slowest single check of each. Every pair is distinct and the verifier's cache
is cleared first, so no number comes from the cache.

The labelled section scores `grpo.rewards.math.verify` and, where it is installed, math-verify (a dev
dependency) on the hand-labelled gold/prediction pairs (`tests/data/math_answer_pairs.jsonl`, the set the
verifier was tuned on, and `math_answer_pairs_holdout.jsonl`, scored only after tuning): per category and
overall, the share of unambiguous pairs whose verdict agrees with the label, and each verifier's checks/s
(one check at a time, cache cleared). math-verify gets each answer as LaTeX (``$…$`` around it unless it
already has math delimiters, a box or an answer tag), its best-scoring way of reading these strings.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import re
import time
from pathlib import Path

from grpo.rewards import bench_sandbox
from grpo.rewards.code import code_reward, default_workers
from grpo.rewards.math import DEFAULT_TIMEOUT_S, _verify_cached, accuracy_reward, verify

LABELLED_DIR = Path(__file__).resolve().parents[2] / "tests" / "data"
LABELLED_SETS = {"tuned": LABELLED_DIR / "math_answer_pairs.jsonl",
                 "hold-out": LABELLED_DIR / "math_answer_pairs_holdout.jsonl"}

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


def load_pairs(path: Path) -> list[dict]:
    """The unambiguous labelled pairs of a jsonl file ({category, gold, pred, label, ambiguous?} per line)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if not r.get("ambiguous")]


def math_verify_judge():
    """math-verify 0.9's verdict as a function (gold, pred) -> bool, or None when it is not installed."""
    try:
        import math_verify
    except ImportError:
        return None
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on each timeout

    def parse(s: str):
        if re.search(r"(?<!\\)\$|\\boxed|\\fbox|\\\(|\\\[|<answer>|####|\n", s):
            return math_verify.parse(s)
        return math_verify.parse(f"${s}$") or math_verify.parse(s)

    def judge(gold: str, pred: str) -> bool:
        try:
            return bool(math_verify.verify(parse(gold), parse(pred)))
        except Exception:  # noqa: BLE001 - a crash is a "not equal", as in its own default
            return False

    return judge


def verdicts(pairs: list[dict], judge) -> tuple[list[bool], float]:
    """(verdict per pair, checks/s), one check at a time on this thread."""
    _verify_cached.cache_clear()
    t0 = time.perf_counter()
    out = [judge(p["gold"], p["pred"]) for p in pairs]
    return out, len(pairs) / max(time.perf_counter() - t0, 1e-9)


def agreement(pairs: list[dict], verdict: list[bool]) -> dict[str, tuple[int, int]]:
    """{category: (pairs whose verdict equals the label, pairs)}, with "overall"."""
    out: dict[str, list[int]] = {}
    for p, v in zip(pairs, verdict):
        for key in (p["category"], "overall"):
            hit = out.setdefault(key, [0, 0])
            hit[0] += v == p["label"]
            hit[1] += 1
    return {k: (a, n) for k, (a, n) in out.items()}


def bench_labelled(sets: dict[str, Path] = LABELLED_SETS) -> None:
    """Print ours vs math-verify per category and overall on each labelled set, and checks/s."""
    judges = {"ours": verify, "math-verify": math_verify_judge()}
    if judges["math-verify"] is None:
        print("labelled: math-verify is not installed (pip install math-verify): ours only")
        del judges["math-verify"]
    tables, speed = {}, {}
    for name, path in sets.items():
        if not Path(path).exists():
            print(f"labelled: {path} not found (run from a source checkout): skipped")
            continue
        pairs = load_pairs(path)
        for who, judge in judges.items():
            v, rate = verdicts(pairs, judge)
            tables[name, who] = agreement(pairs, v)
            speed[name, who] = rate
    if not tables:
        return
    names = list(dict.fromkeys(n for n, _ in tables))
    cats = sorted({c for t in tables.values() for c in t if c != "overall"}) + ["overall"]
    head = "".join(f" | {n + ' n':>11} " + "".join(f"{w:>12}" for w in judges) for n in names)
    print(f"labelled math pairs: agreement with the label on unambiguous pairs\n{'category':<14}{head}")
    for c in cats:
        row = ""
        for n in names:
            count = tables[n, "ours"].get(c, (0, 0))[1]
            row += f" | {count:>11d} " + "".join(f"{tables[n, w][c][0] / count:12.3f}" if count else f"{'-':>12}"
                                                for w in judges)
        print(f"{c:<14}{row}")
    for n in names:
        print(f"checks/s on {n}: " + ", ".join(f"{w} {speed[n, w]:.0f}" for w in judges)
              + "  (one at a time, cache cleared; ours through the bounded sympy helper)")


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
    ap.add_argument("--only", choices=["math", "labelled", "code", "sandbox"], help="run one section (default: all)")
    ap.add_argument("--sandbox", action="store_true", help="only the sandbox throughput section (--only sandbox)")
    ap.add_argument("--sandbox-n", type=int, default=48, help="programs per worker count (sandbox section)")
    args = ap.parse_args(argv)
    if args.sandbox or args.only == "sandbox":
        return bench_sandbox.report(args.sandbox_n)
    rng = random.Random(args.seed)
    if args.only in (None, "math", "labelled"):
        bench_math(*_latex_batch(8, rng))  # start the sympy helper outside the timing
    if args.only in (None, "math"):
        rate, slowest, wrong = bench_math(*_gsm8k_batch(args.n, rng))
        print(f"math GSM8K-style  : {args.n:6d} checks  {rate:9.0f} checks/s  slowest {slowest * 1e3:7.2f} ms  "
              f"wrong verdicts {wrong}")
        rate, slowest, wrong = bench_math(*_latex_batch(args.latex_n, rng))
        print(f"math LaTeX-style  : {args.latex_n:6d} checks  {rate:9.0f} checks/s  slowest {slowest * 1e3:7.2f} ms  "
              f"wrong verdicts {wrong}  (timeout {DEFAULT_TIMEOUT_S:.0f} s per check)")
    if args.only in (None, "labelled"):
        bench_labelled()
    if args.only not in (None, "code"):
        return
    rate, total, scores = bench_code(args.code_n)
    print(f"code (4 tests each): {args.code_n:4d} completions  {rate:7.1f} completions/s  "
          f"({4 * rate:.1f} tests/s, {default_workers()} workers)  total {total:.1f} s  "
          f"all passed: {all(s == 1.0 for s in scores)}")
    bench_sandbox.report(args.sandbox_n)


if __name__ == "__main__":
    main()

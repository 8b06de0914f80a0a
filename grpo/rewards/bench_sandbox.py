"""Sandbox throughput: ``python -m grpo.rewards.bench --sandbox`` (or ``python -m grpo.rewards.bench_sandbox``).

A fixed workload of correct programs, judged by `code_reward` with 1, 2 and all available cores' worth of
workers: 3 of 4 are MBPP-style (a function, a module-level table and a class, 3 asserts: one sandboxed
process each), 1 of 4 an APPS-style stdin/stdout program with 2 cases (two processes). Prints programs/s
and sandboxed processes/s per worker count, the cores and memory this process sees, and the default
worker count `code_reward` would use.
"""
from __future__ import annotations

import argparse
import time

from grpo.rewards.code import available_cores, available_memory, code_reward, default_workers

_ASSERT_PROGRAM = '''```python
from dataclasses import dataclass

SQUARES = [i * i for i in range(10)]

@dataclass
class Pair:
    a: int
    b: int

def solve(xs, k):
    return sorted(xs)[:k]

def make_pair(a, b):
    return Pair(b, a)
```'''
_ASSERT_TESTS = {"asserts": ["assert solve([3, 1, 2], 2) == [1, 2]", "assert SQUARES[3] == 9",
                             "assert make_pair(1, 2).a == 2"]}
_IO_PROGRAM = '''```python
import sys

def main():
    n = int(sys.stdin.readline())
    xs = list(map(int, sys.stdin.readline().split()))
    print(sum(xs[:n]))

if __name__ == "__main__":
    main()
```'''
_IO_TESTS = {"io": [{"input": "3\n1 2 3\n", "output": "6\n"}, {"input": "2\n5 5 9\n", "output": "10\n"}]}


def workload(n: int) -> tuple[list[str], list[dict], int]:
    """n completions with their tests, and the number of sandboxed processes judging them takes."""
    completions, tests, processes = [], [], 0
    for i in range(n):
        io = i % 4 == 3
        completions.append(_IO_PROGRAM if io else _ASSERT_PROGRAM)
        tests.append(_IO_TESTS if io else _ASSERT_TESTS)
        processes += 2 if io else 1
    return completions, tests, processes


def bench_sandbox(n: int = 48, workers: list[int] | None = None) -> list[dict]:
    """Judge the workload once per worker count; one row per count."""
    cores = available_cores()
    counts = workers or sorted({1, min(2, cores), cores})
    completions, tests, processes = workload(n)
    code_reward(None, completions[:2], tests=tests[:2], max_workers=1)  # start-up costs outside the timing
    rows = []
    for w in counts:
        t0 = time.perf_counter()
        scores = code_reward(None, completions, tests=tests, max_workers=w)
        dt = time.perf_counter() - t0
        rows.append({"workers": w, "programs_per_s": n / dt, "processes_per_s": processes / dt, "seconds": dt,
                     "all_passed": all(s == 1.0 for s in scores)})
    return rows


def report(n: int = 48, workers: list[int] | None = None) -> None:
    mem = available_memory()
    print(f"sandbox: {available_cores()} cores available, {mem / 2 ** 30:.1f} GiB memory available" if mem else
          f"sandbox: {available_cores()} cores available", f"-> code_reward default {default_workers()} workers "
          "(at the default 1 GiB per run)")
    for row in bench_sandbox(n, workers):
        print(f"sandbox {row['workers']:3d} workers: {n} programs in {row['seconds']:6.2f} s  "
              f"{row['programs_per_s']:7.1f} programs/s  {row['processes_per_s']:7.1f} sandboxed processes/s  "
              f"all passed: {row['all_passed']}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sandbox-n", type=int, default=48, help="programs per worker count")
    ap.add_argument("--workers", type=int, nargs="*", help="worker counts (default: 1, 2 and all cores)")
    args = ap.parse_args(argv)
    report(args.sandbox_n, args.workers)


if __name__ == "__main__":
    main()

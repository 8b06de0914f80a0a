r"""Math answer verification and the `accuracy` reward.

`verify(gold, prediction)` decides whether a final answer equals the gold answer;
`accuracy_reward` is the TRL-style reward built on it (1.0 / 0.0, None where not applicable).

Grading conventions (kept consistent everywhere in this package; the labelled pairs in
``tests/data/math_answer_pairs.jsonl`` show each one, ``python -m grpo.rewards.bench --only labelled`` scores them):

- **What is compared.** A prediction that still reads as a completion (a ``\boxed{}``, an ``<answer>`` tag,
  ``####``, "the answer is") is reduced to its final answer (`extract`); math-mode delimiters (``$…$``,
  ``\(…\)``, ``\[…\]``) and a whole-answer ``\boxed{}`` are dropped on both sides. Unicode reads as its LaTeX
  (``π``, the minus sign ``−``, ``√2``, ``×``, ``½``, ``x²``, ``≤``, ``∅``, ``ℝ``).
- **Numbers** are compared exactly as fractions: ``1.50 = 3/2 = \frac32 = 1\frac12``; thousands separators
  ``1,000``, ``10,\!000`` (MATH's), ``10{,}000``, ``10\,000``, ``10 000``; ``1.5e3 = 1.5\times10^3 = 1500``;
  ``2.5 million``; number words up to twenty and the tens, hundred, thousand, million; repeating decimals
  ``0.\overline{3} = 0.\dot{3} = 0.333\ldots = 1/3`` (``0.3`` is not 1/3).
- **Rounded decimals**: a gold written as a decimal with k >= 2 places accepts a prediction whose exact
  value is *not* a terminating decimal and rounds to the gold at k places (gold ``0.33``, prediction
  ``1/3``; gold ``3.14``, prediction ``\pi``). A prediction written as a decimal must equal the gold
  exactly (gold ``1/3``, prediction ``0.333`` is wrong; gold ``2.5``, prediction ``2.54`` is wrong).
- **Percentages**: when exactly one side carries ``%`` (or "percent"), ``p\%`` matches ``p`` and ``p/100``
  (gold ``25``, prediction ``25\%`` or ``0.25``).
- **Units** (`units`): a known unit after a number (``5 cm``, ``5\text{ cm}^2``, ``60 mph``, ``30^\circ``,
  ``\$5``) or a label (``12 apples``, anything in ``\text{}``) is not part of the answer. When both sides
  carry a known unit they must have the same dimension and are compared after conversion (``5 cm`` is
  not ``5 m``, ``3 hours`` is not ``3 minutes``, ``cm^3`` is not ``cm^2``; ``3 hours`` is ``180 minutes``).
  Letters that are neither are mathematics: ``3ab``, ``3ba^2``, ``6 ab^2``, ``2xy``, ``4 abc`` and ``5m`` are
  products (``verify("2", "2xy")`` is False); a one-letter unit needs a space (``5 m``).
- **Expressions** are equal when sympy proves ``a - b = 0`` or, for constants, 30-digit evaluation
  agrees to 1e-20 relative (``\frac{1}{\sqrt2} = \frac{\sqrt2}{2}``, ``2^{10} = 1024``, ``\sin 30^\circ = 1/2``,
  ``\log_2 8 = 3``); expressions with variables must also agree at 5 random rational points if `simplify`
  cannot decide. LaTeX is read as printed (``\sin 2x`` is sin(2x), ``|x|``, ``\lfloor x \rfloor``); ``x_1`` and
  ``x_2`` are different variables.
- **Equations**: an assignment — a lone name on one side (``x = 5``, ``5 = x``, ``f(x) = …``, ``a_n = …``), a tuple
  of names (``(x, y) = (3, -1)``) or a list (``x = 3, y = -1``) — matches an assignment to the *same* names with
  equal values (``x = 5`` vs ``y = 5`` is False), or the bare value (a tuple in the order of the gold's names,
  or in alphabetical order of the prediction's). Other equations are equal when their ``lhs - rhs``, cleared
  of fractions, are a nonzero constant multiple of each other (``y = 2x + 3``, ``2y = 4x + 6``, ``y - 2x = 3``).
- **Inequalities, intervals and sets of reals** are compared as sets: ``x \le 3 = 3 \ge x = (-\infty, 3]``,
  ``2x < 6`` is ``x < 3``, ``[1,3] \cup [2,5] = [1,5]``, "or" is a union and "and" an intersection,
  ``\mathbb{R}``, ``\emptyset``/``\varnothing``/``\{\}``, set-builder ``\{x \mid x > 2\}`` and ``x \in S`` included.
  Two inequalities must be in the same variable (``x < 3`` vs ``y < 3`` is False); an interval matches an
  inequality in any one variable.
- **Tuples and intervals** ``(…)``/``[…]`` against each other: bracket kinds must match, elements in order
  (``\langle…\rangle`` is a tuple). **Sets** ``\{…\}`` and bare lists (roots, items joined by "or"/"and"):
  order does not matter (a set ignores repeats, a list counts them); ``a \pm b`` is the two answers.
- **Matrices** (pmatrix, bmatrix, array, …) compare cell by cell (a scalar before the matrix multiplies
  it); a column/row vector matches a tuple of its entries.
- **Multiple choice**: a gold letter A–E (``B``, ``(B)``, ``\textbf{(B)}``, ``\textbf{(B) }12``) accepts a
  prediction that starts with that letter in any case (``(b)``, ``B.``, ``\text{B}``, ``\textbf{(B)}``), or,
  where the gold gives one, the choice's value.
- **Words** (``\text{Monday}``, yes/no, names) compare case-insensitively.
- Anything that cannot be parsed is equal only if its normalised text is identical.

Speed and bounds: a plain-number pair is decided in-process without sympy (the fast path).
Everything else runs in a helper process with a wall-clock limit (`grpo.rewards.math.bounded`); a check that
times out counts as not equal (logged), so one pathological prediction cannot stall training. sympy's
parser `eval`s the answer, in a namespace without Python's I/O, exec/eval, import or printers (``print(5)``
reads as a product of symbols), and answers with string literals, attribute access, subscripts or ``*args``
are not parsed (`parse._screen_source`). A helper that still dies or garbles its reply on a prediction
scores it not equal (logged) as long as a helper answers a trivial check; only a broken helper stops a run.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from grpo.rewards.math.bounded import MAX_HELPERS, POOL, HelperFailed, VerifyTimeout
from grpo.rewards.math.equivalence import normalise, numbers_equal
from grpo.rewards.math.extract import MAX_ANSWER_CHARS, extract_answer, extract_gold, prediction_answer
from grpo.rewards.math.normalize import oversized_number, plain_number
from grpo.rewards.registry import as_text

log = logging.getLogger(__name__)

CODE_TASKS = frozenset({"code", "humaneval", "mbpp"})
DEFAULT_TIMEOUT_S = 5.0
PARALLEL_CHECKS = MAX_HELPERS  # sympy checks of one batch in flight at once (one helper process each)
HEALTH_CHECK_TIMEOUT_S = 30.0  # a fresh helper imports sympy first (seconds on a busy machine)

__all__ = ["accuracy_reward", "verify", "extract_answer", "extract_gold", "CODE_TASKS"]


def _quick_verdict(gold: str, pred: str) -> bool | None:
    """The verdict when no sympy is needed (plain numbers, oversized or empty answers), else None."""
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return gold.strip() == pred.strip()
    g, p = plain_number(gold), plain_number(pred)
    if g is not None and p is not None:
        return numbers_equal(g, p)
    if g is not None and (oversized_number(pred) or not normalise(pred)):
        return False  # an empty answer (the model echoing the prompt's \boxed{}) is not a number, as in answers_equal
    return None


@lru_cache(maxsize=16384)
def _verify_cached(gold: str, pred: str, timeout: float) -> bool:
    quick = _quick_verdict(gold, pred)
    if quick is not None:
        return quick
    try:
        return POOL.check(gold, pred, timeout)
    except VerifyTimeout:
        log.warning("math verification timed out after %.1fs (gold=%r, pred=%r): scored not equal",
                    timeout, gold[:80], pred[:80])
        return False
    except HelperFailed as e:
        if not _helper_works():
            raise  # not the prediction: the helper cannot check anything (a broken install), so say so
        log.warning("math verifier helper failed (%s) on gold=%r, pred=%r: scored not equal", e, gold[:80], pred[:80])
        return False


def _helper_works() -> bool:
    """Does a helper (a fresh one, unless another thread's is idle) answer a trivial check? Asked only after
    a helper failed mid-check."""
    try:
        return POOL.check("1", "1", HEALTH_CHECK_TIMEOUT_S)
    except (VerifyTimeout, HelperFailed):
        return False


@lru_cache(maxsize=None)
def _checkers(pid: int) -> ThreadPoolExecutor:
    """The threads that wait on the helpers (PARALLEL_CHECKS), kept for the process (called with
    os.getpid(): a forked child makes its own). A fresh 8-thread pool per batch cost ~1.2-1.5 ms against
    ~0.2-0.3 ms on a kept one (`python tools/detok_bench.py`, 2-core CPU)."""
    return ThreadPoolExecutor(max_workers=PARALLEL_CHECKS, thread_name_prefix="grpo-verify")


def verify(gold: str, prediction: str | None, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Is `prediction` (an extracted final answer) equal to `gold` under the conventions above?"""
    return verify_all([gold], [prediction], timeout)[0]


def verify_all(golds: list, predictions: list[str | None], timeout: float = DEFAULT_TIMEOUT_S) -> list[bool]:
    """`verify` of each (gold, prediction) pair. Those that need sympy run up to PARALLEL_CHECKS at a time:
    each thread waits on its own helper process (the wait releases the GIL), so the sympy checks of one
    batch run side by side; the verdicts do not depend on the order. The four std-step batches of
    tools/reward_profile.py (2-core CPU, 2026-11-24): median 57.0 -> 49.0 ms per 128 completions,
    identical reward tables; in a traced H100 step the checks were the update's longest GPU idle
    (tools/step_trace.py)."""
    pairs = [None if p is None else (extract_gold(str(g)), prediction_answer(p).strip())
             for g, p in zip(golds, predictions)]
    out = [False if pair is None else _quick_verdict(*pair) for pair in pairs]
    slow = [k for k, v in enumerate(out) if v is None]

    def check(k: int) -> bool:
        return _verify_cached(*pairs[k], float(timeout))

    if len(slow) > 1:
        verdicts = list(_checkers(os.getpid()).map(check, slow))
    else:
        verdicts = [check(k) for k in slow]
    for k, ok in zip(slow, verdicts):
        out[k] = ok
    return out


def accuracy_reward(prompts, completions, answer=None, task=None, fallback="last_number",
                    timeout=DEFAULT_TIMEOUT_S, **kwargs) -> list[float | None]:
    """1.0 if the completion's final answer equals the gold answer, else 0.0; None where the gold answer
    is missing or the task is a code task. `fallback`: "last_number" or None (see grpo.rewards.math.extract)."""
    n = len(completions)
    answers = answer if answer is not None else [None] * n
    tasks = task if task is not None else [None] * n
    out: list[float | None] = [None] * n
    rows, golds, preds = [], [], []
    for i, (completion, gold, t) in enumerate(zip(completions, answers, tasks)):
        if gold is None or (t is not None and str(t).lower() in CODE_TASKS):
            continue
        rows.append(i)
        golds.append(gold)
        preds.append(extract_answer(as_text(completion), fallback=fallback))
    for i, ok in zip(rows, verify_all(golds, preds, timeout)):
        out[i] = 1.0 if ok else 0.0
    return out


def _warm_up() -> None:
    POOL.prestart(PARALLEL_CHECKS)


accuracy_reward.warm_up = _warm_up  # grpo.rewards.registry.load_rewards calls it: sympy loads during model loading

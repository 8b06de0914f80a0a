r"""Math answer verification and the `accuracy` reward.

`verify(gold, prediction)` decides whether a final answer equals the gold answer;
`accuracy_reward` is the TRL-style reward built on it (1.0 / 0.0, None where not applicable).

Grading conventions (kept consistent everywhere in this package):

- **Numbers** are compared exactly as fractions: ``0.5 = 1/2 = \frac12 = 50\%``-as-value is *not*
  automatic; see percentages. ``1,000 = 1000``; ``1.50 = 1.5``; ``1.5e3 = 1.5\times10^3 = 1500``.
- **Rounded decimals**: a gold written as a decimal with k places accepts a prediction whose exact
  value is *not* a terminating decimal and rounds to the gold at k places (gold ``0.33``, prediction
  ``1/3``; gold ``3.14``, prediction ``\pi``). A prediction written as a decimal must equal the gold
  exactly (gold ``1/3``, prediction ``0.333`` is wrong; gold ``2.5``, prediction ``2.54`` is wrong).
- **Percentages**: when exactly one side carries ``%``, ``p\%`` matches ``p`` and ``p/100``
  (gold ``25``, prediction ``25\%`` or ``0.25`` as a percent question's answer).
- **Units, currency, degrees, ``\text{}``** around a number are ignored (``\$5``, ``5 dollars``,
  ``5\text{ cm}^2``, ``30^\circ``). A mixed number ``2\frac12`` is 5/2.
- **Expressions** are equal when sympy proves ``a - b = 0`` or, for constants, 30-digit evaluation
  agrees to 1e-20 relative (``\frac{1}{\sqrt2} = \frac{\sqrt2}{2}``, ``2^{10} = 1024``); expressions
  with variables must also agree at 5 random rational points if `simplify` cannot decide.
- **Equations**: ``x = 5`` matches ``5`` when the left side is a lone variable (or ``f(x)``); two general
  equations are equal when their ``lhs - rhs`` agree up to sign.
- **Intervals and tuples** ``(…)``/``[…]``: bracket kinds must match, elements in order.
  **Sets** ``\{…\}``, bare comma lists and unions of intervals: order does not matter, multiplicity does.
  "or"/"and" between answers reads as a comma. A column/row matrix matches a tuple of its entries.
- **Matrices** (pmatrix, bmatrix, …) compare entry by entry.
- **Multiple choice**: a gold letter A–E (optionally in parentheses) accepts a prediction that starts
  with that letter, any case, e.g. ``(b)``, ``B.``, ``\text{(B)}``.
- **Words** (``\text{Monday}``) compare case-insensitively.
- Anything that cannot be parsed is equal only if its normalised text is identical.

Speed and bounds: a plain-number pair is decided in-process without sympy (the fast path).
Everything else runs in a helper process with a wall-clock limit (`grpo.rewards.math.bounded`); a check that
times out counts as not equal (logged), so one pathological prediction cannot stall training. sympy's
parser `eval`s the answer, in a namespace without Python's I/O, exec/eval, import or printers (``print(5)``
reads as a product of symbols), and answers with string literals, attribute access, subscripts or ``*args``
are not parsed (`equivalence._screen_source`). A helper that still dies or garbles its reply on a prediction
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
    ~0.2-0.3 ms on a kept one (`python scripts/detok_bench.py`, 2-core CPU)."""
    return ThreadPoolExecutor(max_workers=PARALLEL_CHECKS, thread_name_prefix="grpo-verify")


def verify(gold: str, prediction: str | None, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Is `prediction` (an extracted final answer) equal to `gold` under the conventions above?"""
    return verify_all([gold], [prediction], timeout)[0]


def verify_all(golds: list, predictions: list[str | None], timeout: float = DEFAULT_TIMEOUT_S) -> list[bool]:
    """`verify` of each (gold, prediction) pair. Those that need sympy run up to PARALLEL_CHECKS at a time:
    each thread waits on its own helper process (the wait releases the GIL), so the sympy checks of one
    batch run side by side; the verdicts do not depend on the order. The four std-step batches of
    scripts/reward_profile.py (2-core CPU, 2026-11-24): median 57.0 -> 49.0 ms per 128 completions,
    identical reward tables; in a traced H100 step the checks were the update's longest GPU idle
    (scripts/step_trace.py)."""
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

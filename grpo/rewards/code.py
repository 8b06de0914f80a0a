"""The code reward: run the model's Python (its last fenced block) against the example's tests.

``tests`` (see grpo.data.records.Example) may hold any of:

- ``asserts``: a list of test snippets (usually one ``assert`` each), each one test;
- ``io``: a list of ``{"input", "output"}`` stdin/stdout cases, each one test (the program runs once per
  case; output compared after CRLF -> LF, trailing whitespace of each line and trailing blank lines
  dropped);
- ``check`` + ``entry_point`` (HumanEval): ``check(candidate)`` counts as one test;
- ``setup``: code run before the candidate's (imports, a HumanEval prompt) and before the tests.

Reward = tests passed / tests. ``None`` when the example has no tests, the task is not a code task (when
``task`` is given), the tests are malformed, or the sandbox itself failed (infrastructure, not the model's
fault): each such None is logged (a warning) and counted (`pop_metrics`, logged by the trainer as
``grpo/reward/code/...``). A completion without a code block scores 0.0. Nothing a completion contains makes
`code_reward` raise.

The program runs in the sandbox (grpo.rewards.sandbox) as a real ``__main__`` module. Stdout of io cases
is compared by the trainer process. Assert tests and HumanEval checks run *in the trainer process* against
the candidate's module namespace: its functions, classes, constants, lists and objects, reached through
proxies (grpo.rewards._rpc_client, which says exactly who decides what). Values cross as plain data and
equality is decided here, so exit codes, printed markers, ``sys.exit`` before the tests, monkeypatched
builtins, ``__eq__`` tricks and atexit hooks cannot fake a pass, and the tests are never visible to the
candidate. Limits: a test that passes one of its own functions or objects to the candidate fails (only
data and the candidate's own objects cross); a class with a custom ``__eq__`` compares by state; test code
comes from the dataset and is trusted.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grpo.rewards._rpc_client import Broken, CandidateExit, Connection, Namespace
from grpo.rewards.registry import as_text
from grpo.rewards.sandbox import Limits, Sandbox, run_python

log = logging.getLogger(__name__)

CODE_TASKS = frozenset({"code", "humaneval", "mbpp"})
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_SERVER_SOURCE = Path(__file__).with_name("_rpc_server.py").read_text()
_POOL_LOCK = threading.Lock()
_POOLS: dict[int, ThreadPoolExecutor] = {}


class InvalidTests(ValueError):
    """The example's tests (or the completion) cannot be used: the sample scores None."""


class InfraError(RuntimeError):
    """The sandbox failed, not the candidate: the sample scores None."""


# ------------------------------------------------------------------------------------------------ counters
_STATS_LOCK = threading.Lock()
_STATS = {"runs": 0, "infra_errors": 0, "invalid_inputs": 0}
_WARNED = {"infra_errors": 0, "invalid_inputs": 0}


def _count(key: str, why: str = "") -> None:
    with _STATS_LOCK:
        _STATS[key] += 1
        if key in _WARNED:
            _WARNED[key] += 1
            n = _WARNED[key]
    if key in _WARNED and n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th … of each kind since the last
        what = "sandbox infrastructure error" if key == "infra_errors" else "unusable input"  # pop_metrics()
        log.warning("code reward: %s (%d since the last step): %s; scored None", what, n, why)


def pop_metrics() -> dict[str, float]:
    """Counts since the last call (the trainer logs them each step as grpo/reward/<name>/<key>): ``runs``
    (completions judged in the sandbox), ``infra_errors`` and ``invalid_inputs`` (malformed tests or
    completions); each of the last two scored None."""
    with _STATS_LOCK:
        out = {k: float(v) for k, v in _STATS.items()}
        for counts in (_STATS, _WARNED):
            for k in counts:
                counts[k] = 0
    return out


# ------------------------------------------------------------------------------------------------ parsing
def extract_code(completion: str) -> str | None:
    """The last fenced code block (```python, ```py or a bare ```); None if there is none."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    py = [b for lang, b in blocks if lang in ("python", "py", "python3", "")]
    return py[-1] if py else None


def normalise_output(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).rstrip("\n")


def parse_tests(tests) -> dict:
    """The example's tests, checked: {"asserts": [str], "io": [(input, output)], "check": str | None,
    "entry_point": str | None, "setup": str}. Raises InvalidTests naming what is wrong."""
    if not isinstance(tests, dict):
        raise InvalidTests(f"tests must be a dict, got {type(tests).__name__}")

    def strings(key):
        v = tests.get(key) or []
        if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
            raise InvalidTests(f"tests['{key}'] must be a list of strings")
        return list(v)

    io = tests.get("io") or []
    if not isinstance(io, (list, tuple)) or not all(isinstance(c, dict) and "output" in c for c in io):
        raise InvalidTests("tests['io'] must be a list of {'input', 'output'} dicts")
    check, entry, setup = tests.get("check"), tests.get("entry_point"), tests.get("setup") or ""
    if check is not None and not isinstance(check, str):
        raise InvalidTests("tests['check'] must be a string")
    if check and not (isinstance(entry, str) and entry.isidentifier()):
        raise InvalidTests("tests['check'] needs tests['entry_point'], a function name")
    if not isinstance(setup, str):
        raise InvalidTests("tests['setup'] must be a string")
    return {"asserts": strings("asserts"), "io": [(_text(c.get("input", "")), _text(c["output"])) for c in io],
            "check": check or None, "entry_point": entry if check else None, "setup": setup}


def _text(v) -> str:
    if isinstance(v, (list, tuple)):
        v = "\n".join(map(str, v))
    return v if isinstance(v, str) else str(v)


# ------------------------------------------------------------------------------------------------ judging
def run_io_case(code: str, stdin: str, expected: str, limits: Limits) -> bool:
    """One stdin/stdout case. Raises InfraError if the sandbox failed."""
    result = run_python(code, stdin=stdin, limits=limits)
    if result.infra_error:
        raise InfraError(result.infra_error)
    if result.timed_out or result.truncated:
        return False
    return normalise_output(result.stdout.decode("utf-8", errors="replace")) == normalise_output(expected)


def _run_test(source: str, names: Namespace, conn: Connection) -> bool:
    """One test in the namespace; raises Broken/CandidateExit when the remaining tests cannot run."""
    try:
        names.refresh()
        exec(compile(source, "<test>", "exec"), names.ns, names.live())
        ok = True
    except (Broken, CandidateExit):
        raise
    except BaseException as e:  # noqa: BLE001 - a failing assert, or the candidate raising: a failed test
        _reraise_interrupt(e)
        ok = False
    if conn.broken:  # the test itself swallowed the candidate's crash (a bare except): still a failure
        raise Broken(conn.broken)
    return ok


def run_assert_tests(code: str, tests: dict, limits: Limits) -> int:
    """Passed asserts (+ the HumanEval check) of parsed `tests`. Raises InfraError if the sandbox failed and
    InvalidTests if the test setup does not run in this process."""
    box = Sandbox(files={"main.py": code, "setup.py": tests["setup"], "rpc_server.py": _SERVER_SOURCE},
                  limits=limits, mode="rpc")
    try:
        box.start()
    except OSError as e:
        raise InfraError(f"cannot start sandbox: {e}") from e
    try:
        iso = box.read_header()
        if iso is None or (iso == "none" and limits.require_isolation):
            raise InfraError("sandbox bootstrap failed" if iso is None else
                             "namespaces unavailable and Limits.require_isolation is set")
        conn = Connection(box.proc, box.deadline, limits.reply_bytes)
        ns: dict = {"__name__": "__test__"}
        try:
            exec(compile(tests["setup"], "<setup>", "exec"), ns)
        except BaseException as e:  # noqa: BLE001 - the dataset's setup, not the candidate
            _reraise_interrupt(e)
            raise InvalidTests(f"tests['setup'] fails in the judge: {type(e).__name__}: {e}") from e
        passed = 0
        try:
            names = Namespace(ns, conn, tests["entry_point"], tests["setup"])
            names.bind(conn.hello())
            sources = list(tests["asserts"])
            if tests["check"]:
                sources.append(None)  # the HumanEval check: define check(), then call it on the entry point
            for source in sources:
                if source is not None:
                    passed += _run_test(source, names, conn)
                elif _run_test(tests["check"], names, conn) and tests["entry_point"] in ns:
                    passed += _run_test(f"check({tests['entry_point']})", names, conn)
        except (Broken, CandidateExit):
            pass  # the candidate died, hung, exited or broke the protocol: the remaining tests fail
        return passed
    finally:
        box.close()


def score_code(completion: str, tests, limits: Limits | None = None) -> float | None:
    """Fraction of tests passed by the completion's last code block (see the module docstring). Never raises
    because of the completion or the tests: those Nones are logged and counted."""
    try:
        return _score_code(completion, tests, limits or Limits())
    except InvalidTests as e:
        _count("invalid_inputs", str(e))
    except InfraError as e:
        _count("infra_errors", str(e))
    except BaseException as e:  # noqa: BLE001 - a judge bug (or odd test code) must not stop training either
        _reraise_interrupt(e)
        _count("infra_errors", f"unexpected {type(e).__name__} in the judge: {e}")
    return None


def _reraise_interrupt(e: BaseException) -> None:
    """A KeyboardInterrupt on the main thread is the user's Ctrl-C; anywhere else (the reward's worker
    threads) it can only come from test code, and is that test's failure."""
    if isinstance(e, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        raise e


def _score_code(completion: str, tests, limits: Limits) -> float | None:
    if _empty(tests):
        return None
    t = parse_tests(tests)
    total = len(t["io"]) + len(t["asserts"]) + (1 if t["check"] else 0)
    if total == 0:
        return None
    try:
        text = completion if isinstance(completion, str) else as_text(completion)
    except TypeError as e:
        raise InvalidTests(f"completion is not text: {e}") from e
    code = extract_code(text)
    if code is None:
        return 0.0
    _count("runs")
    passed = run_assert_tests(code, t, limits) if total > len(t["io"]) else 0
    program = (t["setup"] + "\n" + code) if t["setup"] else code
    for stdin, expected in t["io"]:
        passed += run_io_case(program, stdin, expected, limits)
    return passed / total


# ------------------------------------------------------------------------------------------------ batches
def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-reward")
        return _POOLS[workers]


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup (v2) CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def available_memory() -> int | None:
    """Bytes of memory available now (MemAvailable, capped by a cgroup v2 limit); None if unknown."""
    avail = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            used = int(open("/sys/fs/cgroup/memory.current").read())
            avail = min(avail if avail is not None else 1 << 62, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def default_workers(memory_bytes: int = 1 << 30) -> int:
    """Sandboxes at once: every available core, but no more than the available memory holds if every run
    used its whole `memory_bytes` limit."""
    mem = available_memory()
    by_memory = max(1, mem // memory_bytes) if mem is not None else available_cores()
    return max(1, min(available_cores(), by_memory))


def code_reward(prompts, completions, tests=None, task=None, max_workers: int | None = None,
                wall_s: float = 10.0, memory_mb: int = 1024, require_isolation: bool = False,
                **kwargs) -> list[float | None]:
    """Fraction of tests passed per completion, `max_workers` at a time (default: `default_workers`)."""
    n = len(completions)
    tests = _column(tests, n, "tests")
    tasks = _column(task, n, "task")
    limits = Limits(wall_s=wall_s, cpu_s=max(1, int(wall_s)), memory_bytes=memory_mb << 20,
                    require_isolation=require_isolation)
    jobs = []
    pool = _pool(max_workers or default_workers(limits.memory_bytes))
    for completion, t, kind in zip(completions, tests, tasks):
        if _empty(t) or (kind is not None and str(kind).lower() not in CODE_TASKS):
            jobs.append(None)
        else:
            jobs.append(pool.submit(score_code, completion, t, limits))
    return [None if j is None else j.result() for j in jobs]


def _empty(tests) -> bool:
    return tests is None or (isinstance(tests, (dict, list, tuple, str)) and not tests)


def _column(values, n: int, name: str) -> list:
    """A dataset column as a list of n entries (missing entries: None, counted as unusable tests)."""
    if values is None:
        return [None] * n
    values = list(values) if isinstance(values, (list, tuple)) else [values] * n
    if len(values) != n:
        _count("invalid_inputs", f"column '{name}' has {len(values)} entries for {n} completions")
        values = (values + [None] * n)[:n]
    return values


code_reward.pop_metrics = pop_metrics

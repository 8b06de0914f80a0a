"""The code reward: run the model's Python (its last fenced block) against the example's tests.

``tests`` (see grpo.data.records.Example) may hold any of:

- ``asserts``: a list of assert statements, each one test;
- ``io``: a list of ``{"input", "output"}`` stdin/stdout cases, each one test (the program runs once per
  case; output compared after CRLF -> LF, trailing whitespace of each line and trailing blank lines
  dropped);
- ``check`` + ``entry_point`` (HumanEval): ``check(candidate)`` counts as one test;
- ``setup``: code run before the candidate's (imports, a HumanEval prompt) and before the tests.

Reward = tests passed / tests. ``None`` when the example has no tests, the task is not a code task
(when ``task`` is given) or the sandbox itself failed (infrastructure, not the model's fault); a
completion without a code block scores 0.0.

Who decides: the trainer process. Stdout of io cases is compared by the parent. Assert tests and
HumanEval checks are executed *in the parent* against proxies: each call of a candidate function is
sent to the sandboxed candidate process and only plain data comes back (see grpo.rewards._rpc_server).
So exit codes, printed markers, ``sys.exit`` before the tests, monkeypatched builtins, ``__eq__``
tricks and atexit hooks cannot fake a pass, and the tests are never visible to the candidate. Limits
of this design: a test that checks an argument mutated in place, or that passes a function or a
custom object to the candidate, fails; test code comes from the dataset and is trusted.
"""
from __future__ import annotations

import builtins
import json
import os
import re
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grpo.rewards._rpc_server import decode, encode
from grpo.rewards.registry import as_text
from grpo.rewards.sandbox import Limits, Sandbox, run_python, split_header

CODE_TASKS = frozenset({"code", "humaneval", "mbpp"})
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_SERVER_SOURCE = Path(__file__).with_name("_rpc_server.py").read_text()
_POOL_LOCK = threading.Lock()
_POOLS: dict[int, ThreadPoolExecutor] = {}


class CandidateError(Exception):
    """A candidate function raised an exception that is not a builtin one (or the call failed)."""


def extract_code(completion: str) -> str | None:
    """The last fenced code block (```python, ```py or a bare ```); None if there is none."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    py = [b for lang, b in blocks if lang in ("python", "py", "python3", "")]
    return py[-1] if py else None


def normalise_output(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).rstrip("\n")


def run_io_case(code: str, case: dict, limits: Limits) -> bool | None:
    """True/False for one stdin/stdout case; None if the sandbox failed."""
    result = run_python(code, stdin=str(case.get("input", "")), limits=limits)
    if result.infra_error:
        return None
    if result.timed_out or result.truncated:
        return False
    got = result.stdout.decode("utf-8", errors="replace")
    return normalise_output(got) == normalise_output(str(case.get("output", "")))


class _Candidate:
    """The judge's end of the RPC pipe to a sandboxed candidate process."""

    def __init__(self, box: Sandbox) -> None:
        self.box, self.proc, self.buf = box, box.proc, b""
        self.err = bytearray()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        try:
            for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
                if len(self.err) < 4096:
                    self.err += chunk
        except (OSError, ValueError):
            pass

    def recv(self) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = self.box.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("candidate ran past its wall-clock limit")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise CandidateError("candidate process ended")
                self.buf += chunk
                if len(self.buf) > self.box.limits.output_bytes:
                    raise CandidateError("candidate reply too large")
        line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise CandidateError("malformed reply")
        return reply

    def call(self, name: str, args: tuple, kwargs: dict):
        msg = json.dumps({"call": name, "args": encode(list(args)), "kwargs": encode(dict(kwargs))}) + "\n"
        try:
            self.proc.stdin.write(msg.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:
            raise CandidateError("candidate process ended") from e
        reply = self.recv()
        if "ok" in reply:
            return decode(reply["ok"])
        exc = getattr(builtins, str(reply.get("raise")), None)
        if isinstance(exc, type) and issubclass(exc, Exception) and exc is not AssertionError:
            raise exc(str(reply.get("msg", "")))
        raise CandidateError(f"{reply.get('raise')}: {reply.get('msg', '')}")

    def proxy(self, name: str):
        def call(*args, **kwargs):
            return self.call(name, args, kwargs)

        call.__name__ = name
        return call


def _run_test(source: str, ns: dict) -> bool:
    try:
        exec(compile(source, "<test>", "exec"), ns)
        return True
    except (TimeoutError, CandidateError):
        raise
    except Exception:  # noqa: BLE001 - a failing assert, or the candidate raising: a failed test
        return False


def run_assert_tests(code: str, tests: dict, limits: Limits) -> tuple[int, int] | None:
    """(passed, total) over the asserts and the HumanEval check; None if the sandbox failed."""
    asserts = list(tests.get("asserts") or [])
    check = tests.get("check")
    total = len(asserts) + (1 if check else 0)
    setup = str(tests.get("setup") or "")
    box = Sandbox(files={"main.py": code, "setup.py": setup, "rpc_server.py": _SERVER_SOURCE},
                  limits=limits, mode="rpc")
    try:
        box.start()
    except OSError:
        return None
    passed = 0
    try:
        cand = _Candidate(box)
        try:
            hello = cand.recv()
        except (TimeoutError, CandidateError):
            return _no_hello(cand, total)
        ns: dict = {"__name__": "__test__"}
        exec(compile(setup, "<setup>", "exec"), ns)
        for name in hello.get("names", []):
            if isinstance(name, str) and name.isidentifier():
                ns[name] = cand.proxy(name)
        try:
            for source in asserts:
                passed += _run_test(str(source), ns)
            if check:
                entry = tests.get("entry_point")
                if entry in ns and _run_test(str(check), ns):
                    passed += _run_test("check(" + entry + ")", ns)
        except (TimeoutError, CandidateError):
            pass  # the candidate died or hung: the remaining tests fail
    finally:
        box.close()
    return passed, total


def _no_hello(cand: _Candidate, total: int) -> tuple[int, int] | None:
    """The candidate never reported in: its own doing (0 passed) unless the bootstrap never ran."""
    cand.box.close()
    time.sleep(0.01)
    iso, _ = split_header(bytes(cand.err))
    if iso is None or (iso == "none" and cand.box.limits.require_isolation):
        return None
    return 0, total


def score_code(completion: str, tests: dict | None, limits: Limits | None = None) -> float | None:
    """Fraction of tests passed by the completion's last code block (see the module docstring)."""
    if not tests:
        return None
    limits = limits or Limits()
    code = extract_code(completion)
    io_cases = list(tests.get("io") or [])
    n_assert = len(tests.get("asserts") or []) + (1 if tests.get("check") else 0)
    total = len(io_cases) + n_assert
    if total == 0:
        return None
    if code is None:
        return 0.0
    passed = 0
    if n_assert:
        res = run_assert_tests(code, tests, limits)
        if res is None:
            return None
        passed += res[0]
    setup = str(tests.get("setup") or "")
    program = (setup + "\n" + code) if setup else code
    for case in io_cases:
        ok = run_io_case(program, case, limits)
        if ok is None:
            return None
        passed += ok
    return passed / total


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-reward")
        return _POOLS[workers]


def default_workers() -> int:
    """Half the cores (at least 1), so the sandboxes do not starve the trainer."""
    return max(1, (os.cpu_count() or 2) // 2)


def code_reward(prompts, completions, tests=None, task=None, max_workers: int | None = None,
                wall_s: float = 10.0, memory_mb: int = 1024, require_isolation: bool = False,
                **kwargs) -> list[float | None]:
    """Fraction of tests passed per completion, checked `max_workers` at a time (default: half the cores)."""
    n = len(completions)
    tests = tests if tests is not None else [None] * n
    tasks = task if task is not None else [None] * n
    limits = Limits(wall_s=wall_s, cpu_s=max(1, int(wall_s)), memory_bytes=memory_mb << 20,
                    require_isolation=require_isolation)
    jobs = []
    pool = _pool(max_workers or default_workers())
    for completion, t, kind in zip(completions, tests, tasks):
        if not t or (kind is not None and str(kind).lower() not in CODE_TASKS):
            jobs.append(None)
        else:
            jobs.append(pool.submit(score_code, as_text(completion), t, limits))
    return [None if j is None else j.result() for j in jobs]

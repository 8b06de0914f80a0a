"""Run `answers_equal` in a helper process with a wall-clock limit.

Why a process: sympy can spin for minutes (or allocate without bound) on a hostile expression, and a
Python thread cannot be stopped; `signal.alarm` only works in the main thread and not in pool workers.
A helper started with `subprocess` (not `multiprocessing`, so it also works inside daemonic pool
workers) reads one JSON request per line and answers one JSON line. The caller waits with `select` on
the pipe, so this works from any thread; on timeout the helper is killed and a fresh one is started on
the next call. Helpers are kept in a small pool (one per concurrently checking thread, up to
`MAX_HELPERS`); each caps its own address space so a runaway expression cannot take the machine's memory.

The helper talks over private copies of its stdin/stdout; fds 0 and 1 (and so `sys.stdin`, `sys.stdout`,
C code and child processes) are /dev/null, so nothing evaluated during a check can read a request or write
into a reply (sympy's parser runs `eval`: an answer ``print(5)`` once printed into the reply pipe and the
reply protocol broke). Any exception a check raises, SystemExit included, is the verdict "not equal". A
helper that dies or answers garbage mid-check raises `HelperFailed`; `grpo.rewards.math` scores that prediction
not equal when a fresh helper still answers a trivial check.
"""
from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)



def _default_helpers() -> int:
    """4 helper processes, up to 8 where there are cores for them (half the CPUs this process may use):
    a std-step batch needs sympy for ~25 of 128 answers, and on a GPU host those checks are what the
    update's first forward pass waits on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 4
    return max(4, min(8, cpus // 2))


MAX_HELPERS = _default_helpers()
HELPER_MEMORY_BYTES = 2 << 30
_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding the `grpo` package


class VerifyTimeout(Exception):
    """The check did not finish within its time limit (the helper was killed)."""


class HelperFailed(RuntimeError):
    """The helper exited or broke the reply protocol during a check (it was killed)."""


class _Helper:
    def __init__(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _ROOT,
               "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONBREAKPOINT": "0"}
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "grpo.rewards.math.bounded"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                     start_new_session=True, cwd=_ROOT)
        self.buf = b""

    def ask(self, gold: str, pred: str, timeout: float) -> bool:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"gold": gold, "pred": pred}) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VerifyTimeout()
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise HelperFailed("verifier helper exited")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or type(reply.get("equal")) is not bool or self.buf:
            raise HelperFailed(f"verifier helper broke the reply protocol: {line[:80]!r}")
        return reply["equal"]

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - already gone
            pass


class HelperPool:
    """Idle helpers, handed to one caller at a time; a helper that timed out or failed is discarded."""

    def __init__(self, max_helpers: int = MAX_HELPERS) -> None:
        self.idle: list[_Helper] = []
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max_helpers)
        self.pid = os.getpid()

    def check(self, gold: str, pred: str, timeout: float) -> bool:
        with self.slots:
            with self.lock:
                if self.pid != os.getpid():  # forked: the parent's helpers are not ours to talk to
                    self.idle, self.pid = [], os.getpid()
                helper = self.idle.pop() if self.idle else None
            if helper is None or helper.proc.poll() is not None:
                helper = _Helper()
            try:
                result = helper.ask(gold, pred, timeout)
            except BaseException:
                helper.kill()
                raise
            with self.lock:
                self.idle.append(helper)
            return result

    def prestart(self, n: int = 1) -> None:
        """Start helpers now (up to n idle ones, once), without waiting: each imports sympy (~0.7 s) in its
        own process while the caller goes on loading the model, instead of on the first scoring call."""
        with self.lock:
            if self.pid != os.getpid():
                self.idle, self.pid = [], os.getpid()
            if not getattr(self, "_prestarted", False):
                while len(self.idle) < n:
                    self.idle.append(_Helper())
                self._prestarted = True

    def close(self) -> None:
        with self.lock:
            for h in self.idle:
                h.kill()
            self.idle = []


POOL = HelperPool()


def _private_channel() -> tuple:
    """Requests (a binary file) and the reply fd, as private copies of fds 0 and 1; then fds 0 and 1 become
    /dev/null: `print`, `input`, a prompt, C code or a child process writing or reading there reaches neither
    (the copies are not inherited by children). Call before anything can have buffered stdin."""
    requests, replies = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    return os.fdopen(requests, "rb"), replies


def _send(fd: int, reply: dict) -> None:
    data = (json.dumps(reply) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _serve() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (HELPER_MEMORY_BYTES, HELPER_MEMORY_BYTES))
    requests, replies = _private_channel()
    import sympy  # noqa: F401 - import before the first request so the first check is not slow

    from grpo.rewards.math.equivalence import answers_equal
    answers_equal("1", "x + 1")  # builds the parser namespace and warms sympy's caches before the first request
    for line in requests:
        try:
            req = json.loads(line)
            reply = {"equal": bool(answers_equal(req["gold"], req["pred"]))}
        except BaseException:  # noqa: BLE001 - anything a prediction raises (MemoryError, SystemExit) is not equal
            reply = {"equal": False}
        _send(replies, reply)


if __name__ == "__main__":
    _serve()

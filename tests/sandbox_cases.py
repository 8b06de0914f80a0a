"""A held-out-style suite for the code reward's sandbox: hostile programs, benign ones, and a 16-at-once round.

Each case is a program (the model's last fenced block), the tests it is judged against, and the scores that
count as *held*: benign programs must score exactly their expected score; a hostile program (each would pass
if its trick worked) must score 0.0 or None. Every case goes through `code_reward`, the entry point a
training run calls, and any exception out of it is a failure. Besides the score, the runner counts

- **escapes**: files written outside the run's temporary directory (sentinel paths), a sentinel file
  changed, or a signal that reached the judging process;
- **leftovers**: processes of a sandbox (its uid range or its token in argv) alive after the call returned;
- trainer side effects: working directory, environment, open file descriptors, threads.

Run it alone: ``PYTHONPATH=. python tests/sandbox_cases.py [-v]`` (prints held/escapes/leftovers);
tests/test_sandbox_suite.py runs it in CI.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

WALL_S = 3.0
MEMORY_MB = 512
TRAINER_PID = os.getpid()


def P(src: str) -> str:
    return textwrap.dedent(src).lstrip("\n")


def fence(code: str) -> str:
    return "Let me solve it.\n```python\n" + code + "```\n"


# ------------------------------------------------------------------------------------------------ tests
ADD = {"asserts": ["assert add(1, 2) == 3", "assert add(5, 7) == 12"]}
SUM_IO = {"io": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12\n"}]}
TWO_LINES = {"io": [{"input": "4\n", "output": "4\n8\n"}]}
HUMANEVAL = {"check": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
             "entry_point": "total", "setup": "def total(xs):\n    \"\"\"Sum of xs.\"\"\"\n"}
AREA = {"asserts": ["assert abs(area(2) - 12.566370614359172) < 1e-6",
                    "assert abs(area(1) - 3.141592653589793) < 1e-6"]}
AREA_ISCLOSE = {"setup": "import math\n",
                "asserts": ["assert math.isclose(area(2), 12.566370614359172)",
                            "assert math.isclose(area(1), 3.141592653589793)"]}
RANGE_CHECK = {"asserts": ["assert 10 <= score(3) <= 11", "assert 20 <= score(7) <= 21"]}
GREET = {"asserts": ["assert greet('ann') == 'Hello, ann!'", "assert greet('bo') == 'Hello, bo!'"]}
PRIMES = {"asserts": ["assert primes(10) == [2, 3, 5, 7]", "assert primes(3) == [2, 3]"]}
PRIMES_IN = {"asserts": ["assert 7 in primes(10)", "assert 5 in primes(6)"]}
PRIMES_SET = {"asserts": ["assert set(primes(10)) == {2, 3, 5, 7}", "assert set(primes(3)) == {2, 3}"]}
SQUARES_ALL = {"asserts": ["assert all(sq(i) == i * i for i in range(5))",
                           "assert sorted(sq(i) for i in (3, 1)) == [1, 9]"]}
POINT_X = {"asserts": ["assert make_point(1, 2).x == 1", "assert make_point(3, 4).y == 4"]}
RAISES = {"asserts": ["try:\n    root(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no raise')",
                      "try:\n    root(-4)\nexcept Exception:\n    pass\nelse:\n    raise AssertionError('no raise')"]}
GOOD_ADD = "def add(a, b):\n    return a + b\n"
GOOD_IO = "a, b = map(int, input().split())\nprint(a + b)\n"

# ------------------------------------------------------------------------------------------------ escapes
SENTINEL_DIR = tempfile.mkdtemp(prefix="grpo-suite-sentinel-")
os.chmod(SENTINEL_DIR, 0o777)
SENTINEL = os.path.join(SENTINEL_DIR, "keep.txt")
HOME = os.path.expanduser("~")
OUTSIDE = [os.path.join(SENTINEL_DIR, "written"), os.path.join(HOME, "grpo_suite_pwned"), "/tmp/grpo_suite_pwned",
           os.path.join(os.getcwd(), "grpo_suite_pwned"), "/var/tmp/grpo_suite_pwned", "/dev/shm/grpo_suite_pwned"]
_LISTENER = socket.socket()
_LISTENER.bind(("127.0.0.1", 0))
_LISTENER.listen(8)
PORT = _LISTENER.getsockname()[1]
WATCHED_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM,
                   signal.SIGQUIT]
WRITE_OUTSIDE = P(f"""
    import os
    for p in {OUTSIDE!r}:
        try:
            open(p, 'w').write('x')
        except OSError:
            pass
    try:
        os.remove({SENTINEL!r})
    except OSError:
        pass
    """)


@dataclass
class Case:
    id: str
    program: str
    tests: dict
    expect: tuple = (0.0, None)     # scores that count as held
    spawns: bool = False             # may start processes: checked for leftovers right after its own call
    benign: bool = False


def H(id, program, tests, spawns=False, expect=(0.0, None)):
    return Case(id, program, tests, expect, spawns)


def B(id, program, tests, expect=1.0):
    return Case(id, program, tests, (expect,), benign=True)


# ------------------------------------------------------------------------------------------------ hostile
# Every hostile program would score above 0 if its trick worked.
HOSTILE = [
    # --- processes and signals
    H("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n" + GOOD_ADD,
      ADD, spawns=True),
    H("subprocess_bomb", P("""
        import subprocess, sys
        while True:
            try:
                subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'])
            except OSError:
                pass
        """) + GOOD_ADD, ADD, spawns=True),
    H("double_fork_setsid", P("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1000)
            os._exit(0)
        def add(a, b):
            return 0
        """), ADD, spawns=True),
    H("escape_then_write", P(f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep({WALL_S + 2})
                for p in {OUTSIDE!r}:
                    try:
                        open(p, 'w').write('late')
                    except OSError:
                        pass
            os._exit(0)
        sys.exit(0)
        """), ADD, spawns=True),
    H("spawn_daemon_in_call", P("""
        import os, time
        def add(a, b):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(1000)
                os._exit(0)
            return -1
        """), ADD, spawns=True),
    H("shell_background", P("""
        import subprocess
        subprocess.Popen(['sh', '-c', 'sleep 1000 &'], start_new_session=True)
        def add(a, b):
            return -1
        """), ADD, spawns=True),
    H("setpgid_child", P("""
        import os, time
        if os.fork() == 0:
            os.setpgid(0, 0)
            time.sleep(1000)
        def add(a, b):
            return -1
        """), ADD, spawns=True),
    H("unshare_then_fork", P("""
        import ctypes, os, time
        libc = ctypes.CDLL(None)
        libc.unshare(0x10000000 | 0x20000000)
        if os.fork() == 0:
            time.sleep(1000)
        def add(a, b):
            return -1
        """), ADD, spawns=True),
    H("zombie_factory", P("""
        import os
        for _ in range(20):
            try:
                if os.fork() == 0:
                    os._exit(0)
            except OSError:
                break
        def add(a, b):
            return -1
        """), ADD, spawns=True),
    H("kill_parent", P(f"""
        import os, signal
        for p in (os.getppid(), {TRAINER_PID}):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        def add(a, b):
            return 0
        """), ADD, spawns=True),
    H("signal_trainer", P(f"""
        import os, signal
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGALRM):
            for p in ({TRAINER_PID}, os.getppid(), 1):
                try:
                    os.kill(p, s)
                except OSError:
                    pass
        def add(a, b):
            return 0
        """), ADD, spawns=True),
    H("signal_trainer_group", P(f"""
        import os, signal
        for target in (lambda: os.killpg(os.getpgid({TRAINER_PID}), signal.SIGINT),
                       lambda: os.killpg(0, signal.SIGTERM), lambda: os.kill(0, signal.SIGUSR1)):
            try:
                target()
            except OSError:
                pass
        def add(a, b):
            return 0
        """), ADD, spawns=True),
    H("kill_everything", "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
      "def add(a, b):\n    return 0\n", ADD, spawns=True),
    H("trainer_proc_mem", P(f"""
        def add(a, b):
            try:
                with open('/proc/{TRAINER_PID}/mem', 'r+b') as f:
                    f.write(b'x')
            except OSError:
                pass
            return -1
        """), ADD, spawns=True),
    H("thread_bomb", P("""
        import threading, time
        while True:
            try:
                threading.Thread(target=time.sleep, args=(1000,)).start()
            except RuntimeError:
                pass
        """) + GOOD_ADD, ADD, spawns=True),
    H("hang_after_output", P("""
        import threading, time
        threading.Thread(target=time.sleep, args=(1000,)).start()
        print(-1)
        """), TWO_LINES, spawns=True),
    # --- time, memory, output, files
    H("loop_toplevel", "while True:\n    pass\n" + GOOD_ADD, ADD),
    H("loop_in_call", "def add(a, b):\n    while True:\n        pass\n", ADD),
    H("sleep_toplevel", "import time\ntime.sleep(1e9)\n" + GOOD_ADD, ADD),
    H("regex_io", "import re\nre.match(r'(x+x+)+y', 'x' * 80)\n" + GOOD_IO, SUM_IO),
    H("killpg_self", "import os, signal\nos.killpg(0, signal.SIGKILL)\ndef add(a, b):\n    return 0\n", ADD),
    H("invalid_utf8", "import sys\na, b = map(int, input().split())\nsys.stdout.buffer.write(str(a + b).encode()"
      " + b'\\xff\\xfe\\n')\n", SUM_IO),
    H("read_passwd", "print(open('/etc/passwd').read())\n", SUM_IO),
    H("sleep_in_call", "import time\ndef add(a, b):\n    time.sleep(1e9)\n", ADD),
    H("ignore_signals", "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):\n"
      "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n" + GOOD_ADD, ADD),
    H("catastrophic_regex", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n" + GOOD_ADD, ADD),
    H("huge_int", "x = 10 ** (10 ** 9)\n" + GOOD_ADD, ADD),
    H("huge_alloc", "x = bytearray(10 ** 11)\n" + GOOD_ADD, ADD),
    H("alloc_in_call", "def add(a, b):\n    return len(bytearray(10 ** 11)) and a + b\n", ADD),
    H("memory_growth_io", "xs = []\nwhile True:\n    xs.append(' ' * 10 ** 7)\n" + GOOD_IO, SUM_IO),
    H("mmap_bomb", "import mmap\nms = []\nwhile True:\n    m = mmap.mmap(-1, 1 << 28)\n    m.write(b'x' * (1 << 20))\n"
      "    ms.append(m)\n" + GOOD_ADD, ADD),
    H("recursion_bomb", "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n"
      + GOOD_ADD, ADD),
    H("recursion_in_call", "import sys\nsys.setrecursionlimit(10 ** 8)\ndef add(a, b):\n    return add(a, b) + 1\n", ADD),
    H("segfault_import", "import ctypes\nctypes.string_at(0)\n" + GOOD_ADD, ADD),
    H("segfault_in_call", "import ctypes\ndef add(a, b):\n    ctypes.string_at(0)\n", ADD),
    H("raise_cpu_limit", "import resource\ntry:\n    resource.setrlimit(resource.RLIMIT_CPU, (10 ** 6, 10 ** 6))\n"
      "except (ValueError, OSError):\n    pass\nwhile True:\n    pass\n" + GOOD_ADD, ADD),
    H("write_gigabytes", "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * 10 ** 6)\n" + GOOD_IO, SUM_IO),
    H("many_files", "i = 0\nwhile True:\n    open(f'f{i}', 'w').close()\n    i += 1\n" + GOOD_IO, SUM_IO),
    H("many_fds", "fs = []\nwhile True:\n    try:\n        fs.append(open('/dev/null'))\n    except OSError:\n        break\n"
      "def add(a, b):\n    return -1\n", ADD),
    H("print_gigabytes", "import sys\nwhile True:\n    sys.stdout.write('3\\n' * 100000)\n", SUM_IO),
    H("endless_line", "import sys\nwhile True:\n    sys.stdout.write('3' * 100000)\n", SUM_IO),
    H("stderr_flood", "import sys\nwhile True:\n    sys.stderr.write('x' * 100000)\n", SUM_IO),
    H("print_flood_asserts", "import sys\nfor _ in range(2000):\n    print('x' * 10000)\n"
      "def add(a, b):\n    print('y' * 10 ** 6)\n    return -1\n", ADD),
    H("write_outside", WRITE_OUTSIDE + "def add(a, b):\n    return 0\n", ADD),
    H("write_outside_io", WRITE_OUTSIDE + "print(0)\n", SUM_IO),
    H("write_repo_and_home", P("""
        import os
        for d in ('..', '../..', os.path.expanduser('~'), '/root', '/etc', '/usr/lib'):
            try:
                open(os.path.join(d, 'grpo_suite_pwned2'), 'w').write('x')
            except OSError:
                pass
        def add(a, b):
            return 0
        """), ADD),
    # --- the reply channel and inherited file descriptors
    H("garbage_all_fds", "import os\nfor fd in range(256):\n    try:\n        os.write(fd, b'garbage\\n{not json\\n')\n"
      "    except OSError:\n        pass\n" + GOOD_ADD.replace("a + b", "a - b"), ADD),
    H("garbage_all_fds_in_call", P("""
        import os
        def add(a, b):
            for fd in range(256):
                try:
                    os.write(fd, b'\\x00\\xff}{garbage\\n')
                except OSError:
                    pass
            return a + b
        """), ADD),
    H("json_wrong_shapes", P("""
        import os
        lines = b'[1, 2]\\n"x"\\n3\\nnull\\n{"ok": {"zz": 1}}\\n{"raise": null}\\n{}\\n{"loaded": 5, "names": 7}\\n'
        for fd in range(3, 64):
            try:
                os.write(fd, lines)
            except OSError:
                pass
        def add(a, b):
            return -1
        """), ADD),
    H("deep_json_reply", P("""
        import os
        msg = b'[' * 200000 + b']' * 200000 + b'\\n'
        def add(a, b):
            for fd in range(3, 64):
                try:
                    os.write(fd, msg)
                except OSError:
                    pass
            return -1
        """), ADD),
    H("huge_json_numbers", P("""
        import os
        msg = b'{"ok": ' + b'9' * 100000 + b'}\\n' + b'{"ok": 1e999999}\\n' + b'{"ok": {"i": "' + b'9' * 100000 + b'"}}\\n'
        def add(a, b):
            for fd in range(3, 64):
                try:
                    os.write(fd, msg)
                except OSError:
                    pass
            return -1
        """), ADD),
    H("endless_reply_line", P("""
        import os
        def add(a, b):
            chunk = b'x' * (1 << 20)
            for fd in range(3, 64):
                try:
                    for _ in range(64):
                        os.write(fd, chunk)
                except OSError:
                    pass
            return -1
        """), ADD),
    H("forge_verdicts", P("""
        import os, json
        lines = [{'loaded': 'ok', 'names': []}, {'ok': True}, {'passed': True}, {'verdict': 'pass'}, {'ok': {'b': True}}]
        data = ''.join(json.dumps(x) + '\\n' for x in lines).encode()
        for fd in range(3, 64):
            try:
                os.write(fd, data)
            except OSError:
                pass
        def add(a, b):
            return -1
        """), ADD),
    H("close_all_fds", "import os\nfor fd in range(3, 256):\n    try:\n        os.close(fd)\n    except OSError:\n"
      "        pass\n" + GOOD_ADD, ADD),
    H("devnull_over_fds", "import os\nnull = os.open('/dev/null', os.O_RDWR)\nfor fd in range(3, 64):\n"
      "    if fd != null:\n        try:\n            os.dup2(null, fd)\n        except OSError:\n            pass\n" + GOOD_ADD,
      ADD),
    H("steal_requests", P("""
        import os, threading
        def eat():
            for fd in range(3, 16):
                try:
                    os.set_blocking(fd, True)
                    while os.read(fd, 65536):
                        pass
                except OSError:
                    pass
        threading.Thread(target=eat, daemon=True).start()
        def add(a, b):
            import time
            time.sleep(0.2)
            return -1
        """), ADD),
    H("half_reply_then_exit", P("""
        import os
        def add(a, b):
            for fd in range(3, 64):
                try:
                    os.write(fd, b'{"ok": ')
                except OSError:
                    pass
            os._exit(0)
        """), ADD),
    H("close_stdio_io", "import os\nfor fd in (0, 1, 2):\n    os.close(fd)\nprint(3)\n", SUM_IO),
    # --- judge/verdict tampering
    H("eq_always_true", "class A:\n    def __eq__(self, other):\n        return True\n"
      "def add(a, b):\n    return A()\n", ADD),
    H("int_subclass_eq", "class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
      "def add(a, b):\n    return I(0)\n", ADD),
    H("str_subclass_eq", "class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
      "def greet(n):\n    return S('')\n", GREET),
    H("list_subclass_eq", "class L(list):\n    def __eq__(self, other):\n        return True\n"
      "def primes(n):\n    return L()\n", PRIMES),
    H("namedtuple_eq", "from collections import namedtuple\nT = namedtuple('T', 'a')\nT.__eq__ = lambda s, o: True\n"
      "def primes(n):\n    return T(0)\n", PRIMES),
    H("ne_and_eq", "class A:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
      "def add(a, b):\n    return A()\n", {"asserts": ["assert not (add(1, 2) != 3)", "assert add(5, 7) == 12"]}),
    H("tolerance_sub", P("""
        class Z:
            def __sub__(self, other):
                return 0.0
            __rsub__ = __sub__
        def area(r):
            return Z()
        """), AREA),
    H("tolerance_abs", P("""
        class Z:
            def __sub__(self, other):
                return self
            def __abs__(self):
                return 0.0
            def __lt__(self, other):
                return True
        def area(r):
            return Z()
        """), AREA),
    H("float_conversion", "class F:\n    def __float__(self):\n        return 12.566370614359172\n"
      "def area(r):\n    return F()\n", {"asserts": ["assert area(2) == 12.566370614359172",
                                                     "assert area(1) == 3.141592653589793"]}),
    H("ordering_always_true", "class A:\n    __le__ = __ge__ = __lt__ = __gt__ = lambda s, o: True\n"
      "def score(x):\n    return A()\n", RANGE_CHECK),
    H("contains_everything", "class A:\n    def __contains__(self, x):\n        return True\n"
      "def primes(n):\n    return A()\n", PRIMES_IN),
    H("hash_eq_set", "class A:\n    def __init__(self, v):\n        self.v = v\n    __eq__ = lambda s, o: True\n"
      "    def __hash__(self):\n        return hash(self.v)\n"
      "def primes(n):\n    return [A(2), A(3), A(5), A(7)][: 2 if n < 5 else 4]\n", PRIMES_SET),
    H("getattr_anything", "class A:\n    def __getattr__(self, name):\n        return self\n"
      "    def __eq__(self, other):\n        return True\ndef make_point(x, y):\n    return A()\n", POINT_X),
    H("class_spoof", "class A:\n    __class__ = int\n    def __eq__(self, o):\n        return True\n"
      "def add(a, b):\n    return A()\n", ADD),
    H("shadow_abs", "def abs(x):\n    return 0\ndef area(r):\n    return -1.0\n", AREA),
    H("shadow_all_sorted", "def all(xs):\n    return True\ndef sorted(xs):\n    return [1, 9]\n"
      "def sq(x):\n    return -1\n", SQUARES_ALL),
    H("shadow_isinstance_len", "def isinstance(a, b):\n    return True\ndef len(x):\n    return 2\n"
      "def pair():\n    return None\n", {"asserts": ["assert isinstance(pair(), tuple) and len(pair()) == 2",
                                                  "assert pair() is not None"]}),
    H("fake_math_module", "class M:\n    @staticmethod\n    def isclose(*a, **k):\n        return True\n"
      "math = M()\ndef area(r):\n    return -1.0\n", AREA_ISCLOSE),
    H("fake_math_no_setup", "class M:\n    @staticmethod\n    def isclose(*a, **k):\n        return True\n"
      "math = M()\ndef area(r):\n    return -1.0\n", {"asserts": AREA_ISCLOSE["asserts"]}),
    H("fake_isclose_import", "def isclose(*a, **k):\n    return True\ndef area(r):\n    return -1.0\n",
      {"setup": "from math import isclose\n", "asserts": ["assert isclose(area(2), 12.566370614359172)"]}),
    H("patch_builtins", "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n"
      "builtins.abs = lambda x: 0\nbuiltins.len = lambda x: 0\nbuiltins.all = lambda x: True\n"
      "def area(r):\n    return -1.0\n", AREA),
    H("settrace_skip", "import sys\nsys.settrace(lambda *a: None)\nsys.setprofile(lambda *a: None)\n"
      "def add(a, b):\n    return -1\n", ADD),
    H("patch_reply_encoder", P("""
        import gc, json
        json.dumps = lambda *a, **k: '{"ok": true}'
        for o in gc.get_objects():
            if isinstance(o, dict) and 'encode' in o and 'decode' in o:
                o['encode'] = lambda *a, **k: True
        def add(a, b):
            return -1
        """), ADD),
    H("frame_walk_send", P("""
        import sys
        f = sys._getframe()
        while f is not None:
            for k in ('send', 'reply', '_send'):
                if k in f.f_locals and callable(f.f_locals[k]):
                    f.f_globals[k] = lambda *a, **kw: None
            f = f.f_back
        def add(a, b):
            return -1
        """), ADD),
    H("hunt_hidden_tests", P("""
        import os, gc
        needle = 'add(5, ' + '7)'
        found = False
        for root in ('.', '/tmp', '/proc/self', '/proc/1', '..', '/proc'):
            try:
                for dp, dn, fn in os.walk(root):
                    for n in fn[:200]:
                        try:
                            found |= needle in open(os.path.join(dp, n), errors='ignore').read(1 << 20)
                        except Exception:
                            pass
                    break
            except Exception:
                pass
        for o in gc.get_objects():
            if isinstance(o, dict):
                for v in list(o.values()):
                    found |= isinstance(v, str) and v is not needle and needle in v
        def add(a, b):
            return a + b if found else -1
        """), ADD),
    H("read_trainer_proc", P(f"""
        found = False
        for name in ('cmdline', 'environ', 'maps'):
            try:
                found |= len(open('/proc/{TRAINER_PID}/' + name, 'rb').read()) > 0
            except OSError:
                pass
        def add(a, b):
            return a + b if found else -1
        """), ADD),
    H("pickle_reduce_reply", P(f"""
        import os
        class Evil:
            def __reduce__(self):
                return (os.system, ('touch {OUTSIDE[0]}',))
        def add(a, b):
            return Evil()
        """), ADD),
    H("code_object_reply", "def add(a, b):\n    return (lambda: 3).__code__\n", ADD),
    H("self_referential_reply", "def add(a, b):\n    x = []\n    x.append(x)\n    return x\n", ADD),
    H("deep_nested_reply", "def add(a, b):\n    x = []\n    for _ in range(10 ** 5):\n        x = [x]\n    return x\n", ADD),
    H("huge_reply", "def add(a, b):\n    return list(range(10 ** 8))\n", ADD),
    H("huge_int_reply", "def add(a, b):\n    return 10 ** 200000 + a + b\n", ADD),
    H("many_globals", "g = globals()\nfor i in range(200000):\n    g['v%d' % i] = 'x' * 20\n"
      "def add(a, b):\n    return -1\n", ADD),
    H("exc_str_loops", "class E(Exception):\n    def __str__(self):\n        while True:\n            pass\n"
      "def root(x):\n    raise E()\n", RAISES),
    H("hang_where_raise_expected", "def root(x):\n    while True:\n        pass\n", RAISES),
    H("die_where_raise_expected", "import os\ndef root(x):\n    os._exit(1)\n", RAISES),
    H("exit_where_raise_expected", "import sys\ndef root(x):\n    sys.exit(1)\n", RAISES),
    H("kbint_where_raise_expected", "def root(x):\n    raise KeyboardInterrupt\n", RAISES),
    H("sigkill_self_where_raise_expected", "import os, signal\ndef root(x):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
      RAISES),
    H("sys_exit_at_import", "import sys\nsys.exit(0)\n", ADD),
    H("os_exit_at_import", "import os\nos._exit(0)\n", ADD),
    H("base_exception_at_import", "class Boom(BaseException):\n    pass\nraise Boom()\n", ADD),
    H("kbint_at_import", "raise KeyboardInterrupt\n", ADD),
    H("exit_in_call", "def add(a, b):\n    raise SystemExit(0)\n", ADD),
    H("generator_exit_in_call", "def add(a, b):\n    raise GeneratorExit\n", ADD),
    H("atexit_marker", "import atexit, sys\natexit.register(lambda: print('All tests passed'))\n"
      "def add(a, b):\n    return 0\nprint('PASS')\nsys.exit(0)\n", ADD),
    H("first_line_only", "n = int(input())\nprint(n)\n", TWO_LINES),
    H("marker_io", "print('OK')\nprint('All tests passed')\nimport os\nos._exit(0)\n", SUM_IO),
    H("read_environ_io", "import os\nprint(dict(os.environ))\n", SUM_IO),
    H("socket_to_host", P(f"""
        import socket
        try:
            socket.create_connection(('127.0.0.1', {PORT}), timeout=1)
            ok = True
        except OSError:
            ok = False
        def add(a, b):
            return a + b if ok else -1
        """), ADD),
    H("dns_and_internet", P("""
        import socket
        ok = False
        for host in ('example.com', '1.1.1.1'):
            try:
                socket.create_connection((host, 80), timeout=1)
                ok = True
            except OSError:
                pass
        def add(a, b):
            return a + b if ok else -1
        """), ADD),
    # --- the proxy protocol (tests see the candidate's namespace through handles)
    H("intenum_eq_override", "from enum import IntEnum\nclass R(IntEnum):\n    A = 0\n    def __eq__(self, o):\n"
      "        return True\n    __hash__ = int.__hash__\ndef add(a, b):\n    return R.A\n", ADD),
    H("fake_module_named_math", "import types\nmath = types.ModuleType('math')\nmath.isclose = lambda *a, **k: True\n"
      "def area(r):\n    return -1.0\n", {"asserts": AREA_ISCLOSE["asserts"]}),
    H("fake_numpy_module", "import types\nnp = types.ModuleType('numpy')\nnp.array_equal = lambda *a, **k: True\n"
      "np.array = lambda *a, **k: None\ndef squares(n):\n    return [-1]\n",
      {"asserts": ["assert np.array_equal(squares(3), np.array([0, 1, 4]))"]}),
    H("origin_lie", "def isclose(*a, **k):\n    return True\nisclose.__module__ = 'math'\nisclose.__qualname__ = 'isclose'\n"
      "def area(r):\n    return -1.0\n", {"asserts": ["assert isclose(area(2), 12.566370614359172)"]}),
    H("forged_handles", P("""
        import os, json
        def add(a, b):
            for fd in range(3, 64):
                try:
                    os.write(fd, (json.dumps({'ok': {'h': 10 ** 6}}) + '\\n').encode())
                except OSError:
                    pass
            return {'v': 1}
        """), ADD),
    H("value_tag_injection", "def add(a, b):\n    return {'v': [0, 3], 'h': 0}\n", ADD),
    H("exception_named_like_judge", "class Broken(Exception):\n    pass\nclass AssertionError(Exception):\n    pass\n"
      "def root(x):\n    raise Broken('no')\n", {"asserts": ["try:\n    root(-1)\nexcept ValueError:\n    pass\n"
                                                          "else:\n    raise AssertionError"]}),
    H("str_not_str", "class A:\n    def __str__(self):\n        return 5\n    def __repr__(self):\n        return None\n"
      "def greet(n):\n    return A()\n", {"asserts": ["assert str(greet('ann')) == 'Hello, ann!'",
                                                    "assert f'{greet(1)}' == 'Hello, 1!'"]}),
    H("repr_bomb", "class A:\n    def __repr__(self):\n        return 'x' * (1 << 26)\n    __str__ = __repr__\n"
      "def greet(n):\n    return A()\n", {"asserts": ["assert str(greet('ann')) == 'Hello, ann!'"]}),
    H("snapshot_bomb", P("""
        from dataclasses import dataclass
        @dataclass
        class Point:
            x: object
            y: int
        def make_point(x, y):
            p = Point(None, -1)
            cur = p
            for _ in range(100000):
                cur.x = Point(None, 0)
                cur = cur.x
            return p
        """), {"asserts": ["assert make_point(1, 2) == Point(1, 2)"]}),
    H("len_lies", "class A:\n    def __len__(self):\n        return -5\n    def __iter__(self):\n        return iter([])\n"
      "def primes(n):\n    return A()\n", {"asserts": ["assert len(primes(10)) == 4 or len(primes(10)) < 0"]}),
    H("mutates_args_claim", "def sort_in_place(xs):\n    xs.append(99)\n",
      {"asserts": ["xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3]"]}),
    H("global_rebinds_itself", "import threading, time\ndef add(a, b):\n    return -1\ndef good(a, b):\n    return a + b\n"
      "def flip():\n    g = globals()\n    while True:\n        g['add'] = good if g['add'] is not good else g['add']\n"
      "        time.sleep(0.001)\nthreading.Thread(target=flip, daemon=True).start()\n"
      "time.sleep(0.05)\nadd = lambda a, b: -1\n", ADD, expect=(0.0, 0.5, 1.0, None)),
    H("humaneval_replace_prompt_helper", "def encode_cyclic(s):\n    return s\ndef decode_cyclic(s):\n    return s\n",
      {"setup": "def encode_cyclic(s: str):\n    \"\"\"Rotate groups of three.\"\"\"\n"
                "    groups = [s[3 * i:min(3 * i + 3, len(s))] for i in range((len(s) + 2) // 3)]\n"
                "    return ''.join((g[1:] + g[0]) if len(g) == 3 else g for g in groups)\n\n"
                "def decode_cyclic(s: str):\n    \"\"\"Inverse of encode_cyclic.\"\"\"\n",
       "check": "def check(candidate):\n    for s in ('abcdef', 'hello world', 'xy'):\n"
                "        assert candidate(encode_cyclic(s)) == s\n", "entry_point": "decode_cyclic"}),
    H("setup_helper_replaced", "def close(a, b):\n    return True\ndef area(r):\n    return -1.0\n",
      {"setup": "def close(a, b):\n    return abs(a - b) < 1e-6\n",
       "asserts": ["assert close(area(2), 12.566370614359172)"]}),
    H("humaneval_wrong", "def total(xs):\n    return 3\n", HUMANEVAL),
    H("humaneval_exit", "import sys\nsys.exit(0)\n", HUMANEVAL),
    H("humaneval_shadow_check", "def check(candidate):\n    pass\ndef total(xs):\n    return -1\n", HUMANEVAL),
]

# ------------------------------------------------------------------------------------------------ benign
DATACLASS_CLASSVAR = P("""
    from __future__ import annotations
    from dataclasses import dataclass, field
    from typing import ClassVar

    @dataclass
    class Account:
        rate: ClassVar[float] = 0.1
        owner: str
        balance: float = 0.0
        history: list = field(default_factory=list)

        def interest(self) -> float:
            return self.balance * self.rate

    def open_account(owner: str, balance: float) -> Account:
        return Account(owner, balance)
    """)
POINT = P("""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Point:
        x: int
        y: int

        def norm2(self):
            return self.x * self.x + self.y * self.y

    def make_point(x, y):
        return Point(x, y)
    """)
STACK = P("""
    class Stack:
        def __init__(self):
            self.items = []

        def push(self, x):
            self.items.append(x)

        def pop(self):
            return self.items.pop()

        def size(self):
            return len(self.items)

        def __len__(self):
            return len(self.items)
    """)
SHAPES = P("""
    from abc import ABC, abstractmethod

    class Shape(ABC):
        @abstractmethod
        def area(self): ...

    class Square(Shape):
        def __init__(self, side):
            self.side = side

        def area(self):
            return self.side ** 2

        def __repr__(self):
            return f"Square({self.side})"
    """)
ENUMS = P("""
    from enum import Enum, IntEnum

    class Color(Enum):
        RED = 1
        GREEN = 2

    class Level(IntEnum):
        LOW = 1
        HIGH = 3

    def complement(c):
        return Color.GREEN if c is Color.RED else Color.RED

    def top():
        return Level.HIGH
    """)

BENIGN = [
    B("io_plain", GOOD_IO, SUM_IO),
    B("io_crlf", "a, b = map(int, input().split())\nprint(a + b, end='\\r\\n')\n", SUM_IO),
    B("io_trailing_space", "a, b = map(int, input().split())\nprint(str(a + b) + '   ')\n", SUM_IO),
    B("io_no_newline", "import sys\na, b = map(int, input().split())\nsys.stdout.write(str(a + b))\n", SUM_IO),
    B("io_main_guard", "def main():\n    n = int(input())\n    print(n)\n    print(2 * n)\n\n"
      "if __name__ == '__main__':\n    main()\n", TWO_LINES),
    B("io_read_all", "import sys\ndata = sys.stdin.read().split()\nprint(sum(map(int, data)))\n", SUM_IO),
    B("io_until_eof", "total = 0\nwhile True:\n    try:\n        line = input()\n    except EOFError:\n        break\n"
      "    total += sum(map(int, line.split()))\nprint(total)\n", SUM_IO),
    B("io_deep_recursion_thread", P("""
        import sys, threading
        sys.setrecursionlimit(1 << 20)
        threading.stack_size(1 << 26)
        def depth(n):
            return 0 if n == 0 else 1 + depth(n - 1)
        def main():
            a, b = map(int, input().split())
            print(a + b + depth(20000) - 20000)
        t = threading.Thread(target=main)
        t.start()
        t.join()
        """), SUM_IO),
    B("io_dataclass_classvar", DATACLASS_CLASSVAR + "a = open_account('x', 100.0)\nn = int(input())\n"
      "print(n)\nprint(int(a.interest()) - 10 + 2 * n)\n", TWO_LINES),
    B("asserts_plain", GOOD_ADD, ADD),
    B("asserts_prints", "def add(a, b):\n    print('adding', a, b)\n    return a + b\n", ADD),
    B("asserts_stdlib", "import functools, math\n@functools.lru_cache(None)\ndef add(a, b):\n"
      "    return int(math.fsum([a, b]))\n", ADD),
    B("humaneval_ok", "def total(xs):\n    return sum(xs)\n", HUMANEVAL),
    B("humaneval_typed_prompt", "from typing import List\n\ndef _helper(x: int) -> int:\n    return x\n\n"
      "def total(xs: List[int]) -> int:\n    return sum(_helper(x) for x in xs)\n",
      {**HUMANEVAL, "setup": "from typing import List\n\ndef total(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n"}),
    B("humaneval_prompt_helper", "def decode_cyclic(s):\n    groups = [s[3 * i:min(3 * i + 3, len(s))] for i in "
      "range((len(s) + 2) // 3)]\n    return ''.join((g[-1] + g[:-1]) if len(g) == 3 else g for g in groups)\n",
      {"setup": "def encode_cyclic(s: str):\n    \"\"\"Rotate groups of three.\"\"\"\n"
                "    groups = [s[3 * i:min(3 * i + 3, len(s))] for i in range((len(s) + 2) // 3)]\n"
                "    return ''.join((g[1:] + g[0]) if len(g) == 3 else g for g in groups)\n\n"
                "def decode_cyclic(s: str):\n    \"\"\"Inverse of encode_cyclic.\"\"\"\n",
       "check": "def check(candidate):\n    for s in ('abcdef', 'hello world', 'xy'):\n"
                "        assert candidate(encode_cyclic(s)) == s\n", "entry_point": "decode_cyclic"}),
    B("asserts_with_prompt_stub", "def add(a, b):\n    return a + b\n",
      {"setup": "def add(a: int, b: int) -> int:\n    \"\"\"Sum of a and b.\"\"\"\n    ...\n", **ADD}),
    B("humaneval_float_check", "def mean(xs):\n    return sum(xs) / len(xs)\n",
      {"check": "import math\ndef check(candidate):\n    assert abs(candidate([1.0, 2.0]) - 1.5) < 1e-6\n"
                "    assert math.isclose(candidate([3, 4, 5]), 4.0)\n", "entry_point": "mean",
       "setup": "def mean(xs):\n    \"\"\"Mean.\"\"\"\n"}),
    B("dataclass_classvar_future", DATACLASS_CLASSVAR,
      {"asserts": ["assert open_account('a', 100.0).interest() == 10.0", "assert Account('b', 50).balance == 50",
                   "assert Account.rate == 0.1", "assert open_account('c', 1).history == []"]}),
    B("module_constants", "MOD = 10 ** 9 + 7\nPRIMES = [2, 3, 5, 7]\nTABLE = {'a': 1, 'b': [1, 2]}\n"
      "PAIR = (1, 'x')\nNAMES = {'ann', 'bo'}\n",
      {"asserts": ["assert MOD == 1000000007", "assert PRIMES[2] == 5 and len(PRIMES) == 4",
                   "assert TABLE['b'] == [1, 2]", "assert PAIR == (1, 'x')", "assert 'ann' in NAMES"]}),
    B("global_counter_updates", "calls = 0\ndef tick():\n    global calls\n    calls += 1\n    return calls\n",
      {"asserts": ["assert tick() == 1", "assert calls == 1", "assert tick() == 2 and calls == 2"]}),
    B("global_instance", STACK + "shared = Stack()\nshared.push(5)\n",
      {"asserts": ["assert shared.size() == 1", "assert shared.items == [5]", "assert len(shared) == 1"]}),
    B("class_instances", STACK,
      {"asserts": ["s = Stack()\ns.push(1)\ns.push(2)\nassert s.pop() == 2\nassert s.size() == 1",
                   "s = Stack()\nassert s.items == []\ns.push('a')\nassert s.items == ['a']"]}),
    B("returned_object_attributes", POINT,
      {"asserts": ["assert make_point(1, 2).x == 1", "p = make_point(3, 4)\nassert (p.x, p.y) == (3, 4)",
                   "assert make_point(1, 2).norm2() == 5"]}),
    B("dataclass_equality", POINT,
      {"asserts": ["assert make_point(1, 2) == Point(1, 2)", "assert make_point(1, 2) != Point(2, 1)",
                   "assert {make_point(1, 2): 'a'}[Point(1, 2)] == 'a'", "assert make_point(0, 0) in [Point(0, 0)]"]}),
    B("generators", "def gen(n):\n    yield from range(n)\n\ndef naturals():\n    i = 0\n    while True:\n"
      "        yield i\n        i += 1\n",
      {"asserts": ["assert list(gen(3)) == [0, 1, 2]", "assert next(gen(5)) == 0", "assert sum(gen(4)) == 6",
                   "import itertools\nassert list(itertools.islice(naturals(), 3)) == [0, 1, 2]"]}),
    B("recursion_moderate", "import sys\nsys.setrecursionlimit(10000)\ndef depth(n):\n"
      "    return 0 if n == 0 else 1 + depth(n - 1)\n",
      {"asserts": ["assert depth(900) == 900", "assert depth(5000) == 5000"]}),
    B("numpy_arrays", "import numpy as np\ndef squares(n):\n    return np.arange(n) ** 2\n"
      "def ident(n):\n    return np.eye(n)\n",
      {"setup": "import numpy as np\n",
       "asserts": ["assert list(squares(4)) == [0, 1, 4, 9]", "assert squares(3).tolist() == [0, 1, 4]",
                   "assert np.array_equal(squares(3), np.array([0, 1, 4]))", "assert squares(4).sum() == 14",
                   "assert ident(2).tolist() == [[1.0, 0.0], [0.0, 1.0]] and ident(3)[1][1] == 1.0"]}),
    B("numpy_scalars", "import numpy as np\ndef mean(xs):\n    return np.mean(xs)\ndef count(xs):\n"
      "    return np.int64(len(xs))\n",
      {"asserts": ["assert mean([1, 2, 3]) == 2.0", "assert abs(mean([1, 2]) - 1.5) < 1e-9",
                   "assert count([1, 2]) == 2 and count([]) + 1 == 1"]}),
    B("main_guard_reads_stdin", "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n"
      "    x, y = map(int, input().split())\n    print(add(x, y))\n", ADD),
    B("main_guard_selftest", "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n"
      "    assert add(2, 2) == 4\n    print('ok')\n", ADD),
    B("name_is_main", "import sys\ndef who():\n    return __name__\ndef real_module():\n"
      "    return sys.modules['__main__'].__dict__ is globals()\n",
      {"asserts": ["assert who() == '__main__'", "assert real_module() is True"]}),
    B("pickle_main_class", "import pickle\nclass Box:\n    def __init__(self, v):\n        self.v = v\n"
      "def roundtrip(v):\n    return pickle.loads(pickle.dumps(Box(v))).v\n",
      {"asserts": ["assert roundtrip(3) == 3", "assert roundtrip('a') == 'a'"]}),
    B("typing_namedtuple", "from typing import NamedTuple, List, Optional\n\nclass Pair(NamedTuple):\n    a: int\n"
      "    b: int\n\ndef swap(p: Pair) -> Pair:\n    return Pair(p.b, p.a)\n\ndef first(xs: List[int]) -> Optional[int]:\n"
      "    return xs[0] if xs else None\n",
      {"asserts": ["assert swap(Pair(1, 2)) == Pair(2, 1)", "assert swap(Pair(1, 2)) == (2, 1)",
                   "assert swap(Pair(1, 2)).a == 2", "assert first([]) is None and first([4]) == 4"]}),
    B("enums", ENUMS,
      {"asserts": ["assert complement(Color.RED) == Color.GREEN", "assert complement(Color.GREEN).name == 'RED'",
                   "assert Color.RED.value == 1", "assert top() == 3 and top() > Level.LOW",
                   "assert complement(Color.RED) is Color.GREEN"]}),
    B("functools_closures", "import functools, operator\n@functools.lru_cache(maxsize=None)\ndef fib(n):\n"
      "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\ndef adder(n):\n    return functools.partial(operator.add, n)\n\n"
      "def make_counter():\n    count = 0\n    def inc():\n        nonlocal count\n        count += 1\n        return count\n"
      "    return inc\n",
      {"asserts": ["assert fib(80) == 23416728348467685", "assert adder(2)(3) == 5",
                   "c = make_counter()\nc()\nassert c() == 2"]}),
    B("mutate_argument", "def sort_in_place(xs):\n    xs.sort()\n\ndef add_key(d):\n    d['k'] = 1\n",
      {"asserts": ["xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3]",
                   "d = {}\nadd_key(d)\nassert d == {'k': 1}"]}),
    B("collections_results", "from collections import Counter, defaultdict, deque, OrderedDict\n"
      "def freq(s):\n    return Counter(s)\ndef groups(words):\n    g = defaultdict(list)\n    for w in words:\n"
      "        g[w[0]].append(w)\n    return g\ndef window(xs):\n    return deque(xs, maxlen=2)\n",
      {"asserts": ["assert freq('aab') == {'a': 2, 'b': 1}", "assert freq('aab').most_common(1) == [('a', 2)]",
                   "assert groups(['ab', 'ac', 'b']) == {'a': ['ab', 'ac'], 'b': ['b']}",
                   "assert list(window([1, 2, 3])) == [2, 3]"]}),
    B("fractions_decimals", "from fractions import Fraction\nfrom decimal import Decimal\n"
      "def half(x):\n    return Fraction(x, 2)\ndef money(s):\n    return Decimal(s) * 2\n",
      {"setup": "from fractions import Fraction\nfrom decimal import Decimal\n",
       "asserts": ["assert half(3) == Fraction(3, 2)", "assert half(4) == 2", "assert money('1.10') == Decimal('2.20')"]}),
    B("big_global_table", "N = 10 ** 6\nSIEVE = [True] * (N + 1)\nSIEVE[0] = SIEVE[1] = False\n"
      "for i in range(2, int(N ** 0.5) + 1):\n    if SIEVE[i]:\n        SIEVE[i * i::i] = [False] * len(range(i * i, N + 1, i))\n"
      "def is_prime(n):\n    return SIEVE[n]\n",
      {"asserts": ["assert is_prime(999983)", "assert not is_prime(10 ** 6)", "assert SIEVE[7] is True"]}),
    B("big_global_numpy_and_counter", "import numpy as np\nfrom collections import Counter\n"
      "TABLE = np.arange(10 ** 6, dtype=np.int64) * 2\nCOUNTS = Counter(range(100000))\ndef double(i):\n"
      "    return int(TABLE[i])\n",
      {"asserts": ["assert double(123456) == 246912", "assert TABLE[10] == 20 and len(TABLE) == 10 ** 6",
                   "assert COUNTS[5] == 1"]}),
    B("classmethods_properties", "class Temperature:\n    def __init__(self, c):\n        self._c = c\n"
      "    @classmethod\n    def from_f(cls, f):\n        return cls((f - 32) * 5 / 9)\n    @property\n"
      "    def celsius(self):\n        return self._c\n    @staticmethod\n    def boiling():\n        return 100\n",
      {"asserts": ["assert Temperature.from_f(212).celsius == 100", "assert Temperature.boiling() == 100",
                   "t = Temperature(5)\nassert t.celsius == 5"]}),
    B("abc_isinstance_repr", SHAPES,
      {"asserts": ["assert Square(2).area() == 4", "assert isinstance(Square(2), Shape)",
                   "assert repr(Square(3)) == 'Square(3)' and str(Square(1)) == 'Square(1)'"]}),
    B("raises_expected", "import math\ndef root(x):\n    if x < 0:\n        raise ValueError('negative')\n"
      "    return math.sqrt(x)\n", RAISES),
    B("custom_exception", "class InsufficientFunds(ValueError):\n    pass\n\ndef withdraw(balance, amount):\n"
      "    if amount > balance:\n        raise InsufficientFunds(f'need {amount - balance}')\n    return balance - amount\n",
      {"asserts": ["assert withdraw(5, 3) == 2",
                   "try:\n    withdraw(1, 3)\nexcept InsufficientFunds as e:\n    assert 'need 2' in str(e)\nelse:\n"
                   "    raise AssertionError",
                   "try:\n    withdraw(1, 3)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError"]}),
    B("unicode_bytes_nested", "def rev(s):\n    return s[::-1]\ndef enc(s):\n    return s.encode()\n"
      "def nest():\n    return {'a': [(1, 2.5), {3}], 'b': frozenset({'x'}), 'c': None, 'd': b'\\x00', 'e': 1 + 2j}\n",
      {"asserts": ["assert rev('héllo😀') == '😀olléh'", "assert enc('ab') == b'ab'",
                   "assert nest() == {'a': [(1, 2.5), {3}], 'b': frozenset({'x'}), 'c': None, 'd': b'\\x00', 'e': 1 + 2j}"]}),
    B("big_int_result", "import math\ndef fact(n):\n    return math.factorial(n)\n",
      {"asserts": ["import math\nassert fact(2000) == math.factorial(2000)", "assert fact(5) == 120"]}),
    B("objects_round_trip", SHAPES + "def area_of(shape):\n    return shape.area()\ndef scaled(shape, k):\n"
      "    return Square(shape.side * k)\n",
      {"asserts": ["assert area_of(Square(3)) == 9", "assert scaled(Square(2), 3).side == 6",
                   "s = Square(1)\ns.side = 5\nassert area_of(s) == 25", "assert area_of(shape=Square(2)) == 4"]}),
    B("list_of_dataclasses", POINT + "def diagonal(n):\n    return [Point(i, i) for i in range(n)]\n",
      {"asserts": ["assert diagonal(2) == [Point(0, 0), Point(1, 1)]", "assert [p.x for p in diagonal(3)] == [0, 1, 2]",
                   "assert len(diagonal(4)) == 4 and diagonal(1)[0].norm2() == 0"]}),
    B("dict_of_objects", STACK + "def stacks(names):\n    return {n: Stack() for n in names}\n",
      {"asserts": ["d = stacks(['a', 'b'])\nd['a'].push(1)\nassert d['a'].size() == 1 and d['b'].size() == 0",
                   "assert sorted(stacks(['x', 'y'])) == ['x', 'y']"]}),
    B("generator_protocol", "def countdown(n):\n    while n > 0:\n        yield n\n        n -= 1\n",
      {"asserts": ["g = countdown(3)\nassert next(g) == 3\nassert list(g) == [2, 1]",
                   "assert 2 in countdown(3) and 5 not in countdown(3)", "assert dict(enumerate(countdown(2))) == {0: 2, 1: 1}"]}),
    B("kwargs_defaults", "def power(base, exp=2, *, mod=None):\n    r = base ** exp\n    return r % mod if mod else r\n",
      {"asserts": ["assert power(3) == 9", "assert power(2, exp=10, mod=1000) == 24", "assert power(base=2, exp=3) == 8"]}),
    B("datetime_values", "import datetime\ndef next_day(d):\n    return d + datetime.timedelta(days=1)\n",
      {"setup": "import datetime\n",
       "asserts": ["assert next_day(datetime.date(2024, 2, 28)) == datetime.date(2024, 2, 29)",
                   "assert next_day(datetime.date(2023, 12, 31)).year == 2024"]}),
    B("sorting_objects", "from dataclasses import dataclass\n@dataclass(order=True)\nclass V:\n    n: int\n"
      "def people():\n    return [V(3), V(1), V(2)]\n",
      {"asserts": ["assert sorted(people())[0] == V(1)", "assert [v.n for v in sorted(people())] == [1, 2, 3]",
                   "assert max(people()).n == 3"]}),
]


# ------------------------------------------------------------------------------------------------ runner
def sandbox_processes() -> list[tuple[int, bytes]]:
    """Live processes of any sandbox: the sandbox uid range or a run token in argv."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        if "\nState:\tZ" not in status and (60000 <= uid < 60256 or b"grpo-sandbox-" in cmd):
            found.append((int(pid), cmd[:80]))
    return found


@dataclass
class Outcome:
    case: Case
    score: object = None
    error: str | None = None
    seconds: float = 0.0
    leftovers: list = field(default_factory=list)

    @property
    def held(self) -> bool:
        if self.error is not None:
            return False
        return any((self.score is None) if e is None else
                   (isinstance(self.score, float) and abs(self.score - e) < 1e-9) for e in self.case.expect)


@dataclass
class Report:
    outcomes: list[Outcome]
    escapes: list[str]
    leftovers: list
    side_effects: list[str]
    round_held: int = 0
    round_total: int = 0
    round_seconds: float = 0.0

    @property
    def held(self) -> int:
        return sum(o.held for o in self.outcomes) + self.round_held

    @property
    def total(self) -> int:
        return len(self.outcomes) + self.round_total

    def summary(self) -> str:
        hostile = [o for o in self.outcomes if not o.case.benign]
        benign = [o for o in self.outcomes if o.case.benign]
        return (f"held {self.held}/{self.total} (hostile {sum(o.held for o in hostile)}/{len(hostile)}, benign "
                f"{sum(o.held for o in benign)}/{len(benign)}, 16-at-once {self.round_held}/{self.round_total} in "
                f"{self.round_seconds:.1f} s); escapes {len(self.escapes)}; leftovers {len(self.leftovers)}; "
                f"trainer side effects {len(self.side_effects)}")


def _score(case: Case, reward, workers: int = 1) -> Outcome:
    """One case, alone in its own code_reward call (calls with the same `workers` share one pool)."""
    t0 = time.monotonic()
    out = Outcome(case)
    try:
        out.score = reward(None, [fence(case.program)], tests=[case.tests], wall_s=WALL_S, memory_mb=MEMORY_MB,
                           max_workers=workers)[0]
    except BaseException as e:  # noqa: BLE001 - anything out of the reward is a failure of the suite
        out.error = f"{type(e).__name__}: {str(e)[:200]}"
    out.seconds = time.monotonic() - t0
    return out


def _trainer_state() -> dict:
    return {"cwd": os.getcwd(), "env": dict(os.environ), "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count()}


def default_round(size: int = 16) -> list[Case]:
    """Half benign, half hostile (quick ones: no process spawning, no timeouts)."""
    quick = [c for c in HOSTILE if not c.spawns and c.id in QUICK_HOSTILE]
    return (BENIGN[: size // 2] + quick)[:size]


QUICK_HOSTILE = {"garbage_all_fds", "garbage_all_fds_in_call", "json_wrong_shapes", "forge_verdicts", "eq_always_true",
                 "int_subclass_eq", "tolerance_sub", "shadow_abs", "fake_isclose_import", "close_all_fds",
                 "sys_exit_at_import", "patch_builtins", "contains_everything", "hash_eq_set", "read_trainer_proc"}


def run_suite(cases: list[Case] | None = None, round_cases: list[Case] | None = None, parallel: int = 4,
              reward=None) -> Report:
    """Run every case through `code_reward` (spawning ones one at a time, checked for leftovers right after
    their own call; the rest `parallel` at a time), then `round_cases` in one batch, then look for escapes."""
    if reward is None:
        from grpo.rewards.code import code_reward as reward
    cases = list(HOSTILE + BENIGN) if cases is None else cases
    round_cases = default_round() if round_cases is None else round_cases
    with open(SENTINEL, "w") as f:
        f.write("untouched")
    os.chmod(SENTINEL, 0o666)
    received: list[int] = []
    old = {}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for s in WATCHED_SIGNALS:
            old[s] = signal.signal(s, lambda signum, frame: received.append(signum))
    before = _trainer_state()
    outcomes: dict[str, Outcome] = {}
    leftovers = []
    try:
        for case in [c for c in cases if c.spawns]:
            out = _score(case, reward)
            out.leftovers = sandbox_processes()
            leftovers += [(case.id, p) for p in out.leftovers]
            outcomes[case.id] = out
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            rest = [c for c in cases if not c.spawns]
            for out in pool.map(lambda c: _score(c, reward, parallel), rest):
                outcomes[out.case.id] = out
        leftovers += [("after-cases", p) for p in sandbox_processes()]
        round_held = round_total = 0
        round_s = 0.0
        if round_cases:
            mix = round_cases
            t0 = time.monotonic()
            try:
                scores = reward(None, [fence(c.program) for c in mix], tests=[c.tests for c in mix], wall_s=WALL_S,
                                memory_mb=MEMORY_MB)
                round_held = sum(Outcome(c, s).held for c, s in zip(mix, scores))
            except BaseException:  # noqa: BLE001
                round_held = 0
            round_s = time.monotonic() - t0
            round_total = len(mix)
            leftovers += [("after-round", p) for p in sandbox_processes()]
        if any(c.spawns for c in cases):
            time.sleep(WALL_S + 2.5)  # longer than the delayed writer in 'escape_then_write' waits
            leftovers += [("late", p) for p in sandbox_processes()]
    finally:
        if in_main:
            for s, h in old.items():
                signal.signal(s, h)
    escapes = [f"wrote {p}" for p in OUTSIDE if os.path.exists(p)]
    for d in ("..", "../..", HOME):
        p = os.path.join(d, "grpo_suite_pwned2")
        if os.path.exists(p):
            escapes.append(f"wrote {p}")
    try:
        if open(SENTINEL).read() != "untouched":
            escapes.append("sentinel changed")
    except OSError:
        escapes.append("sentinel removed")
    escapes += [f"signal {signal.Signals(s).name} reached the trainer" for s in received]
    after = _trainer_state()
    side = [f"{k}: {before[k]!r} -> {after[k]!r}"[:200] for k in ("cwd", "env") if before[k] != after[k]]
    if after["fds"] > before["fds"] + 2:
        side.append(f"open fds {before['fds']} -> {after['fds']}")
    for p in OUTSIDE:
        if os.path.exists(p):
            os.remove(p)
    ordered = [outcomes[c.id] for c in cases]
    return Report(ordered, escapes, leftovers, side, round_held, round_total, round_s)


def cleanup() -> None:
    import shutil
    shutil.rmtree(SENTINEL_DIR, ignore_errors=True)
    _LISTENER.close()


if __name__ == "__main__":
    verbose = "-v" in sys.argv
    t0 = time.monotonic()
    report = run_suite()
    for o in report.outcomes:
        if verbose or not o.held:
            mark = "held" if o.held else "FAIL"
            print(f"{mark:4}  {'benign ' if o.case.benign else 'hostile'}  {o.case.id:32} score={o.score!r:8} "
                  f"{o.seconds:5.1f}s {o.error or ''}")
    for e in report.escapes:
        print("ESCAPE", e)
    for who, p in report.leftovers:
        print("LEFTOVER", who, p)
    for s in report.side_effects:
        print("SIDE EFFECT", s)
    print(report.summary(), f"(total {time.monotonic() - t0:.0f} s)")
    cleanup()

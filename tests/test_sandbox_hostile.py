"""Hostile programs against the code reward: each must score 0 in bounded time, leave no process
behind and touch nothing outside its temporary directory; benign edge cases must still score 1.

All cases of a group run at once in a thread pool (the sandbox is built for that), then each case is
asserted on its own. Programs that can only be contained with namespaces are skipped where the kernel
does not give them (see grpo.rewards.sandbox)."""
import os
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from grpo.rewards.code import score_code
from grpo.rewards.sandbox import SANDBOX_UID_BASE, Limits, isolation_report

WALL_S = 3.0
LIMITS = Limits(wall_s=WALL_S, cpu_s=3, memory_bytes=512 << 20, processes=16, file_bytes=8 << 20)
ADD = {"asserts": ["assert add(1, 2) == 3", "assert add(5, 7) == 12"]}
SUM_IO = {"io": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12\n"}]}
TWO_LINES = {"io": [{"input": "4\n", "output": "4\n8\n"}]}
HUMANEVAL = {"check": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
             "entry_point": "total", "setup": "def total(xs):\n    \"\"\"Sum of xs.\"\"\"\n"}
SENTINEL_DIR = tempfile.mkdtemp(prefix="grpo-hostile-sentinel-")
os.chmod(SENTINEL_DIR, 0o777)
SENTINEL = os.path.join(SENTINEL_DIR, "keep.txt")
with open(SENTINEL, "w") as f:
    f.write("untouched")
os.chmod(SENTINEL, 0o666)
OUTSIDE = [os.path.join(SENTINEL_DIR, "written"), os.path.expanduser("~/grpo_pwned"), "/tmp/grpo_pwned",
           os.path.join(os.getcwd(), "grpo_pwned"), "/var/tmp/grpo_pwned", "/dev/shm/grpo_pwned"]
_SERVER = socket.socket()
_SERVER.bind(("127.0.0.1", 0))
_SERVER.listen(8)
PORT = _SERVER.getsockname()[1]
GOOD_ADD = "def add(a, b):\n    return a + b\n"
GOOD_IO = "a, b = map(int, input().split())\nprint(a + b)\n"


def fence(code):
    return "Here it is:\n```python\n" + code + "```\n"


# (id, program, tests, needs_isolation). Every program would pass if its trick worked.
HOSTILE = [
    ("loop_toplevel", "while True:\n    pass\n" + GOOD_ADD, ADD, False),
    ("loop_in_call", "def add(a, b):\n    while True:\n        pass\n", ADD, False),
    ("sleep_toplevel", "import time\ntime.sleep(1e9)\n" + GOOD_ADD, ADD, False),
    ("sleep_in_call", "import time\ndef add(a, b):\n    time.sleep(1e9)\n", ADD, False),
    ("ignore_signals", "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):\n"
     "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n" + GOOD_ADD, ADD, False),
    ("catastrophic_regex", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n" + GOOD_ADD, ADD, False),
    ("regex_io", "import re\nre.match(r'(x+x+)+y', 'x' * 80)\n" + GOOD_IO, SUM_IO, False),
    ("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
     + GOOD_ADD, ADD, True),
    ("subprocess_bomb", "import subprocess, sys\nwhile True:\n    try:\n        subprocess.Popen([sys.executable, "
     "'-c', 'import time; time.sleep(1000)'])\n    except OSError:\n        pass\n" + GOOD_ADD, ADD, True),
    ("double_fork_setsid", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
     "        time.sleep(1000)\n    os._exit(0)\ndef add(a, b):\n    return 0\n", ADD, True),
    ("escape_then_write", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
     "        time.sleep(" + str(WALL_S + 2) + ")\n        open('" + OUTSIDE[0] + "', 'w').write('late')\n"
     "    os._exit(0)\nimport sys\nsys.exit(0)\n", ADD, True),
    ("kill_parent", f"import os, signal\nfor p in (os.getppid(), {os.getpid()}):\n    try:\n"
     "        os.kill(p, signal.SIGKILL)\n    except OSError:\n        pass\ndef add(a, b):\n    return 0\n", ADD, True),
    ("kill_everything", "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
     "def add(a, b):\n    return 0\n", ADD, True),
    ("killpg_self", "import os, signal\nos.killpg(0, signal.SIGKILL)\ndef add(a, b):\n    return 0\n", ADD, False),
    ("huge_alloc", "x = bytearray(10 ** 11)\n" + GOOD_ADD, ADD, False),
    ("alloc_in_call", "def add(a, b):\n    return len(bytearray(10 ** 11)) and a + b\n", ADD, False),
    ("memory_growth", "xs = []\nwhile True:\n    xs.append(' ' * 10 ** 7)\n" + GOOD_IO, SUM_IO, False),
    ("deep_recursion", "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n"
     + GOOD_ADD, ADD, False),
    ("segfault_ctypes", "import ctypes\nctypes.string_at(0)\n" + GOOD_ADD, ADD, False),
    ("segfault_in_call", "import ctypes\ndef add(a, b):\n    ctypes.string_at(0)\n", ADD, False),
    ("write_gigabytes", "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * 10 ** 6)\n"
     + GOOD_IO, SUM_IO, False),
    ("many_files", "i = 0\nwhile True:\n    open(f'f{i}', 'w').close()\n    i += 1\n" + GOOD_IO, SUM_IO, False),
    ("print_gigabytes", "import sys\nwhile True:\n    sys.stdout.write('3\\n' * 100000)\n", SUM_IO, False),
    ("endless_line", "import sys\nwhile True:\n    sys.stdout.write('3' * 100000)\n", SUM_IO, False),
    ("stderr_flood", "import sys\nwhile True:\n    sys.stderr.write('x' * 100000)\n", SUM_IO, False),
    ("invalid_utf8", "import sys\na, b = map(int, input().split())\nsys.stdout.buffer.write(str(a + b).encode()"
     " + b'\\xff\\xfe\\n')\n", SUM_IO, False),
    ("read_passwd", "print(open('/etc/passwd').read())\n", SUM_IO, False),
    ("read_environ", "import os\nprint(dict(os.environ))\n", SUM_IO, False),
    ("hunt_hidden_tests", "import os, gc\nneedle = 'add(5, ' + '7)'\nfound = False\n"
     "for root in ('.', '/tmp', '/proc/self', '/proc/1', '..'):\n"
     "    for dp, dn, fn in os.walk(root):\n        for n in fn:\n            try:\n"
     "                found |= needle in open(os.path.join(dp, n), errors='ignore').read()\n"
     "            except Exception:\n                pass\n        break\n"
     "for o in gc.get_objects():\n    if isinstance(o, dict):\n        for v in list(o.values()):\n"
     "            found |= isinstance(v, str) and v is not needle and needle in v\n"
     "def add(a, b):\n    return a + b if found else -1\n", ADD, False),
    ("socket_to_host", f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {PORT}), timeout=1)\n"
     "    ok = True\nexcept OSError:\n    ok = False\ndef add(a, b):\n    return a + b if ok else -1\n", ADD, True),
    ("sys_exit_before_asserts", "import sys\nsys.exit(0)\n", ADD, False),
    ("os_exit_before_asserts", "import os\nos._exit(0)\n", ADD, False),
    ("exit_in_call", "def add(a, b):\n    raise SystemExit(0)\n", ADD, False),
    ("eq_always_true", "class A:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return A()\n",
     ADD, False),
    ("int_subclass_eq", "class I(int):\n    def __eq__(self, other):\n        return True\n"
     "def add(a, b):\n    return I(0)\n", ADD, False),
    ("patch_builtins", "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n"
     "builtins.print = lambda *a, **k: None\nbuiltins.len = lambda x: 0\ndef add(a, b):\n    return 0\n", ADD, False),
    ("atexit_marker", "import atexit, sys\natexit.register(lambda: print('All tests passed'))\n"
     "def add(a, b):\n    return 0\nprint('PASS')\nsys.exit(0)\n", ADD, False),
    ("first_line_only", "n = int(input())\nprint(n)\n", TWO_LINES, False),
    ("marker_io", "print('OK')\nprint('All tests passed')\nimport os\nos._exit(0)\n", SUM_IO, False),
    ("close_channels", "import os\nfor fd in range(3, 64):\n    try:\n        os.close(fd)\n    except OSError:\n"
     "        pass\n" + GOOD_ADD, ADD, False),
    ("forge_replies", "import os, json\nmsg = json.dumps({'loaded': 'ok', 'names': []}) + '\\n'\n"
     "for fd in range(3, 16):\n    try:\n        os.write(fd, (msg + json.dumps({'ok': {'i': '3'}}) + '\\n').encode())\n"
     "    except OSError:\n        pass\ndef add(a, b):\n    return -1\n", ADD, False),
    ("deep_nested_result", "def add(a, b):\n    x = []\n    for _ in range(10 ** 5):\n        x = [x]\n    return x\n",
     ADD, False),
    ("huge_result", "def add(a, b):\n    return list(range(10 ** 8))\n", ADD, False),
    ("thread_bomb", "import threading, time\nwhile True:\n    try:\n        threading.Thread(target=time.sleep, "
     "args=(1000,)).start()\n    except RuntimeError:\n        pass\n" + GOOD_ADD, ADD, True),
    ("write_outside", "import os\nfor p in " + repr(OUTSIDE) + ":\n    try:\n        open(p, 'w').write('x')\n"
     "    except OSError:\n        pass\ntry:\n    os.remove(" + repr(SENTINEL) + ")\nexcept OSError:\n    pass\n"
     "def add(a, b):\n    return 0\n", ADD, True),
    ("humaneval_wrong", "def total(xs):\n    return 3\n", HUMANEVAL, False),
    ("humaneval_exit", "import sys\nsys.exit(0)\n", HUMANEVAL, False),
]

BENIGN = [
    ("io_plain", GOOD_IO, SUM_IO),
    ("io_crlf", "a, b = map(int, input().split())\nprint(a + b, end='\\r\\n')\n", SUM_IO),
    ("io_trailing_space", "a, b = map(int, input().split())\nprint(str(a + b) + '   ')\n", SUM_IO),
    ("io_no_newline", "import sys\na, b = map(int, input().split())\nsys.stdout.write(str(a + b))\n", SUM_IO),
    ("io_main_guard", "def main():\n    n = int(input())\n    print(n)\n    print(2 * n)\n\n"
     "if __name__ == '__main__':\n    main()\n", TWO_LINES),
    ("asserts_plain", GOOD_ADD, ADD),
    ("asserts_prints", "def add(a, b):\n    print('adding', a, b)\n    return a + b\n", ADD),
    ("asserts_stdlib", "import functools, math\n@functools.lru_cache(None)\ndef add(a, b):\n"
     "    return int(math.fsum([a, b]))\n", ADD),
    ("humaneval_ok", "def total(xs):\n    return sum(xs)\n", HUMANEVAL),
]


def _isolated():
    return isolation_report()["namespaces"]


def _run_all(cases):
    def one(case):
        t0 = time.monotonic()
        return score_code(fence(case[1]), case[2], LIMITS), time.monotonic() - t0

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip([c[0] for c in cases], pool.map(one, cases)))


@pytest.fixture(scope="module")
def hostile_results():
    cases = [c for c in HOSTILE if _isolated() or not c[3]]
    return _run_all(cases)


@pytest.fixture(scope="module")
def benign_results():
    return _run_all(BENIGN)


@pytest.mark.slow
@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_program_fails_in_bounded_time(case, hostile_results):
    if case[3] and not _isolated():
        pytest.skip("needs network/PID/mount namespaces, which this kernel does not give")
    score, seconds = hostile_results[case[0]]
    assert score == 0.0, f"{case[0]} scored {score}"
    assert seconds < WALL_S * len(case[2].get("io", [1])) + 5


@pytest.mark.parametrize("case", BENIGN, ids=[c[0] for c in BENIGN])
def test_benign_edge_cases_pass(case, benign_results):
    assert benign_results[case[0]][0] == 1.0


def _leftovers():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = open(f"/proc/{pid}/status").read()
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        if "\nState:\tZ" not in status and (SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + 256
                                           or b"grpo-sandbox-" in cmd):
            found.append((pid, cmd[:80]))
    return found


@pytest.mark.slow
def test_nothing_left_behind(hostile_results, benign_results):
    time.sleep(WALL_S + 3)  # longer than the delayed writer in 'escape_then_write' would wait
    assert _leftovers() == []
    for path in OUTSIDE:
        assert not os.path.exists(path), path
    assert open(SENTINEL).read() == "untouched"
    assert not [d for d in os.listdir(tempfile.gettempdir()) if d.startswith("grpo-sbx-")]


def test_enough_hostile_cases():
    assert len(HOSTILE) >= 40


@pytest.fixture(scope="module", autouse=True)
def _remove_sentinel():
    yield
    import shutil
    shutil.rmtree(SENTINEL_DIR, ignore_errors=True)
    _SERVER.close()

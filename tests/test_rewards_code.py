"""Code reward: extraction, io/assert/HumanEval scoring, partial credit, None cases, parallel batches."""
import time

import pytest

import grpo.rewards.sandbox as sandbox
from grpo.rewards.code import code_reward, extract_code, normalise_output, score_code

ADD = {"asserts": ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add('a', 'b') == 'ab'"]}


def fence(code, lang="python"):
    return f"Reasoning...\n```{lang}\n{code}```\n"


def test_extract_last_python_block():
    text = "```python\nx = 1\n```\nbetter:\n```py\nx = 2\n```\n```text\nnot code\n```"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("no code here") is None


def test_normalise_output():
    assert normalise_output("1 \r\n2\t\r\n\r\n") == normalise_output("1\n2")


def test_partial_credit_and_setup():
    assert score_code(fence("def add(a, b):\n    return a + b if isinstance(a, int) else None\n"), ADD) == pytest.approx(2 / 3)
    tests = {"asserts": ["assert area(2) == 12.56"], "setup": "PI = 3.14\n"}
    assert score_code(fence("def area(r):\n    return PI * r * r\n"), tests) == 1.0


def test_candidate_exceptions_map_to_builtins():
    tests = {"asserts": ["try:\n    f(-1)\n    raise AssertionError\nexcept ValueError:\n    pass"]}
    assert score_code(fence("def f(x):\n    raise ValueError('negative')\n"), tests) == 1.0


def test_io_and_asserts_together():
    tests = {"asserts": ["assert double(2) == 4"], "io": [{"input": "3\n", "output": "6\n"}]}
    code = "def double(x):\n    return 2 * x\n\nif __name__ == '__main__':\n    print(double(int(input())))\n"
    assert score_code(fence(code), tests) == 1.0


def test_not_applicable_and_missing_code():
    out = code_reward(None, ["```python\nprint(1)\n```", "no code", "x"],
                      tests=[None, ADD, ADD], task=["mbpp", "mbpp", "gsm8k"])
    assert out == [None, 0.0, None]


def test_infrastructure_failure_is_none(monkeypatch):
    monkeypatch.setattr(sandbox.sys, "executable", "/nonexistent/python")
    assert score_code(fence("def add(a, b):\n    return a + b\n"), ADD) is None
    assert score_code(fence("print(1)\n"), {"io": [{"input": "", "output": "1"}]}) is None


def test_chat_completions_and_parallel_batch():
    good = [{"role": "assistant", "content": fence("def add(a, b):\n    return a + b\n")}]
    t0 = time.monotonic()
    out = code_reward(None, [good] * 6, tests=[ADD] * 6, max_workers=3)
    assert out == [1.0] * 6
    assert time.monotonic() - t0 < 30


def test_network_isolation_reported():
    report = sandbox.isolation_report()
    assert set(report) == {"namespaces", "separate_uid"}


def test_sandbox_works_from_a_venv_under_tmp(tmp_path):
    """A checkout (and its .venv) under /tmp: the sandbox covers /tmp with the run's own directory, so the
    venv prefix vanishes inside; the child must still start (regression: every code reward was None)."""
    import subprocess
    import sys
    from pathlib import Path

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    repo = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.path.insert(0, %r); from grpo.rewards.sandbox import run_python; "
            "r = run_python('import json; print(6 * 7)'); print(r.returncode, r.stdout)") % str(repo)
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0 b'42\\n'", (out.stdout, out.stderr[-800:])


# ------------------------------------------------------------------ issue #19: robustness of the judge
GARBAGE_ON_EVERY_FD = ("import os\nfor fd in range(256):\n    try:\n        os.write(fd, b'garbage\\n{not json\\n')\n"
                       "    except OSError:\n        pass\ndef add(a, b):\n    return a + b\n")


def test_garbage_on_the_reply_channel_scores_instead_of_raising():
    """Regression: the reply channel's JSONDecodeError escaped code_reward and would stop a training run."""
    assert code_reward(None, [fence(GARBAGE_ON_EVERY_FD)], tests=[ADD], wall_s=3) in ([0.0], [None])


def test_candidate_runs_as_a_real_main_module():
    code = ("from __future__ import annotations\nfrom dataclasses import dataclass\nfrom typing import ClassVar\n"
            "import sys\n\n@dataclass\nclass Account:\n    rate: ClassVar[float] = 0.5\n    owner: str\n"
            "    balance: float = 0.0\n\ndef interest(owner, balance):\n    return Account(owner, balance).balance * Account.rate\n"
            "def real():\n    return sys.modules['__main__'].__dict__ is globals() and __name__ == '__main__'\n")
    tests = {"asserts": ["assert interest('a', 10.0) == 5.0", "assert real()"]}
    assert score_code(fence(code), tests) == 1.0
    io = {"io": [{"input": "", "output": "5.0\nTrue"}]}
    assert score_code(fence(code + "print(interest('b', 10.0))\nprint(real())\n"), io) == 1.0


def test_tests_see_the_whole_module_namespace():
    code = ("MOD = 10 ** 9 + 7\nTABLE = {'a': [1, 2]}\n\nclass Stack:\n    def __init__(self):\n        self.items = []\n"
            "    def push(self, x):\n        self.items.append(x)\n        return self\n\nshared = Stack().push(3)\n"
            "def make():\n    return Stack()\n\ndef squares(n):\n    yield from (i * i for i in range(n))\n")
    tests = {"asserts": ["assert MOD == 1000000007 and TABLE['a'] == [1, 2]", "assert shared.items == [3]",
                         "s = make()\ns.push(1).push(2)\nassert s.items == [1, 2]", "assert list(squares(3)) == [0, 1, 4]"]}
    assert score_code(fence(code), tests) == 1.0


@pytest.mark.parametrize("code, tests", [
    ("class A:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return A()\n", ADD),
    ("class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)\n",
     ADD),
    ("def abs(x):\n    return 0\ndef area(r):\n    return -1.0\n", {"asserts": ["assert abs(area(2) - 12.566) < 1e-3"]}),
    ("class Z:\n    def __sub__(self, o):\n        return 0.0\n    __rsub__ = __sub__\ndef area(r):\n    return Z()\n",
     {"asserts": ["assert abs(area(2) - 12.566) < 1e-3"]}),
    ("class A:\n    def __contains__(self, x):\n        return True\ndef primes(n):\n    return A()\n",
     {"asserts": ["assert 7 in primes(10)"]}),
    ("def isclose(*a, **k):\n    return True\ndef area(r):\n    return -1.0\n",
     {"setup": "from math import isclose\n", "asserts": ["assert isclose(area(2), 12.566)"]}),
    ("import os\ndef root(x):\n    os._exit(1)\n",
     {"asserts": ["try:\n    root(-1)\nexcept Exception:\n    pass\nelse:\n    raise AssertionError"]}),
    ("def root(x):\n    while True:\n        pass\n",
     {"asserts": ["try:\n    root(-1)\nexcept BaseException:\n    pass\nelse:\n    raise AssertionError"]}),
], ids=["eq", "int-subclass-eq", "shadow-abs", "sub-tolerance", "contains", "shadow-setup-import", "die-for-raise",
        "hang-for-raise-bare-except"])
def test_verdict_tampering_does_not_pass(code, tests):
    assert score_code(fence(code), tests, sandbox.Limits(wall_s=2, cpu_s=2)) == 0.0


def test_infrastructure_failures_are_counted_and_warned(monkeypatch, caplog):
    from grpo.rewards import code as code_mod

    code_mod.pop_metrics()
    monkeypatch.setattr(sandbox.sys, "executable", "/nonexistent/python")
    with caplog.at_level("WARNING", logger="grpo.rewards.code"):
        assert code_reward(None, [fence("def add(a, b):\n    return a + b\n")] * 2, tests=[ADD, {"io": 5}]) == [None, None]
    stats = code_mod.pop_metrics()
    assert stats["infra_errors"] == 1 and stats["invalid_inputs"] == 1, stats
    assert "sandbox infrastructure error" in caplog.text and "unusable input" in caplog.text
    assert code_mod.pop_metrics()["infra_errors"] == 0  # popped: counts are per call of pop_metrics


def _garbage(rng, depth=0):
    kinds = [None, 0, -1, 1.5, float("nan"), "", "x", "assert True", "def (:", b"\xff", object(), [], {}]
    if depth < 3:
        kinds += [[_garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))],
                  {rng.choice(["asserts", "io", "check", "entry_point", "setup", "input", "output", "zz"]):
                   _garbage(rng, depth + 1) for _ in range(rng.randint(0, 4))}]
    return rng.choice(kinds)


FRAGMENTS = ["def add(a, b):\n    return a + b\n", "import os\nos.write(3, b'{\"ok\": 3}\\n')\n", "raise SystemExit\n",
             "import sys\nsys.stdout.close()\n", "import os\nos.close(4)\n", "class A:\n    __eq__ = lambda s, o: True\n",
             "add = A()\n", "print('x' * 100000)\n", "import os\nos.write(1, b'\\x00\\xff' * 1000)\n", "add = 3\n",
             "globals()['add'] = type('F', (), {'__call__': lambda s, *a: [[[]]]})()\n", "raise KeyboardInterrupt\n",
             "import json\njson.dumps = None\n", "def add(a, b):\n    raise ValueError(object())\n", "\x00\x01 garbage",
             "def add(a, b):\n    return float('nan')\n", "def add(a, b):\n    return {'h': 0}\n", "  indented = 1\n"]


def test_no_input_makes_code_reward_raise():
    """Fuzz: garbage test specs, garbage completions and programs built from hostile fragments."""
    import random

    rng = random.Random(19)
    specs = [_garbage(rng) for _ in range(150)] + [
        {"asserts": "assert True"}, {"asserts": [1]}, {"io": {"a": 1}}, {"io": [{"input": 1}]}, {"check": 5},
        {"check": "def check(c): pass", "entry_point": "not an id"}, {"setup": 3, "asserts": ["assert True"]},
        {"setup": "def f(:", "asserts": ["assert True"]}, {"setup": "raise KeyboardInterrupt", "asserts": ["assert 1"]},
        {"asserts": ["def (:", "raise SystemExit", "raise KeyboardInterrupt", "raise GeneratorExit"]},
        {"io": [{"input": None, "output": ["3"]}]}]
    good = fence("def add(a, b):\n    return a + b\n")
    out = code_reward(None, [good] * len(specs), tests=specs, wall_s=2, memory_mb=256)
    assert len(out) == len(specs) and all(v is None or 0.0 <= v <= 1.0 for v in out)
    programs = ["".join(rng.sample(FRAGMENTS, rng.randint(1, 4))) for _ in range(24)]
    completions = [fence(p) for p in programs] + [None, 5, b"```python\nx\n```", [{"content": None}], object(),
                                                  "```python\n" + "(" * 100000 + "\n```"]
    out = code_reward(None, completions, tests=[ADD] * len(completions), wall_s=2, memory_mb=256)
    assert len(out) == len(completions) and all(v is None or 0.0 <= v <= 1.0 for v in out), out
    assert code_reward(None, [good] * 3, tests=[ADD]) == [1.0, None, None]  # a short column: None, not a raise


def test_default_workers_use_cores_bounded_by_memory(monkeypatch):
    from grpo.rewards import code as code_mod

    monkeypatch.setattr(code_mod, "available_cores", lambda: 16)
    monkeypatch.setattr(code_mod, "available_memory", lambda: 64 << 30)
    assert code_mod.default_workers(1 << 30) == 16
    monkeypatch.setattr(code_mod, "available_memory", lambda: 5 << 30)
    assert code_mod.default_workers(1 << 30) == 5
    monkeypatch.setattr(code_mod, "available_memory", lambda: 100 << 20)
    assert code_mod.default_workers(1 << 30) == 1


COUNTING_REWARD = '''
_calls = [0]

def counted(completions, **kwargs):
    _calls[0] += 1
    return [0.0] * len(completions)

def _pop():
    n, _calls[0] = _calls[0], 0
    return {"calls": n}

counted.pop_metrics = _pop
'''


def test_reward_counters_reach_the_training_metrics(tmp_path, tok):
    import json

    from grpo.config import load_config
    from grpo.testing import tiny_model
    from grpo.train import train

    (tmp_path / "counting.py").write_text(COUNTING_REWARD)
    cfg = load_config(base={
        "data": {"train": {"source": "arithmetic", "options": {"n": 8, "seed": 0, "difficulty": [1]}}, "template": "plain"},
        "rewards": [{"name": f"{tmp_path / 'counting.py'}:counted"}],
        "sampling": {"group_size": 2, "max_new_tokens": 4}, "eval": {"before": False, "after": False},
        "optim": {"steps": 2, "prompts_per_step": 2, "micro_batch_size": 4, "lr": 1e-4},
        "run": {"output_dir": str(tmp_path / "run"), "progress": False, "mixed_precision": "no"}})
    train(cfg, model=tiny_model(tok), tokenizer=tok)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["grpo/reward/counted/calls"] for r in rows] == [1.0, 1.0]


ESCAPER = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1000)\n"
           "    os._exit(0)\ntime.sleep(0.3)\ndef add(a, b):\n    return a + b\nprint(3)\n")


def test_namespace_teardown_kills_escapers_without_scanning_proc(monkeypatch):
    """In a PID namespace, killing its init takes every process of the run with it (a setsid'd grandchild
    too), so the slow /proc scan is not needed; without namespaces the scan still runs."""
    if not sandbox.isolation_report()["namespaces"]:
        pytest.skip("needs PID namespaces")
    scans = []
    real_scan = sandbox.sandbox_pids
    monkeypatch.setattr(sandbox, "kill_stragglers", lambda *a: scans.append(a))
    tokens = []
    real_start = sandbox.Sandbox.start

    def start(self):
        proc = real_start(self)
        tokens.append((self.token, self.uid))
        return proc

    monkeypatch.setattr(sandbox.Sandbox, "start", start)
    assert score_code(fence(ESCAPER), {"io": [{"input": "", "output": "3"}], **ADD}) == 1.0
    assert scans == [] and len(tokens) == 2
    assert [pid for token, uid in tokens for pid in real_scan(token, uid)] == []


def test_functions_named_like_modules_are_still_seen():
    code = "def copy(xs):\n    return list(xs)\ndef array(n):\n    return [0] * n\n"
    assert score_code(fence(code), {"asserts": ["assert copy((1, 2)) == [1, 2]", "assert array(2) == [0, 0]"]}) == 1.0

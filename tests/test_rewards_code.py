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

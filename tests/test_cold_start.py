"""grpo.data.cold_start and grpo.data.expressions: R1 targets from GSM8K rationales and arithmetic/countdown traces."""
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from grpo.data import DataError, load_examples
from grpo.data.cold_start import (arithmetic_reasoning, build, r1_target, strip_calculator_annotations, to_records,
                             write_jsonl)
from grpo.data.expressions import ExpressionError, evaluate, parse, reduction_steps, to_text
from grpo.data.records import Example

FIXTURES = Path(__file__).parent / "data"
R1 = re.compile(r"^<think>\n(.+)\n</think>\n<answer>(.+)</answer>$", re.DOTALL)


def test_reduction_steps_respect_precedence_and_parentheses():
    assert reduction_steps("3 + 4 * 5") == [("4 * 5", "20", "3 + 20"), ("3 + 20", "23", "23")]
    assert reduction_steps("(3 + 4) * 5") == [("3 + 4", "7", "7 * 5"), ("7 * 5", "35", "35")]
    assert reduction_steps("10 - 2 - 3") == [("10 - 2", "8", "8 - 3"), ("8 - 3", "5", "5")]
    assert reduction_steps("(2 * 9 + 6) / 4")[-1] == ("24 / 4", "6", "6")
    assert reduction_steps("2 * (3 - 5)") == [("3 - 5", "-2", "2 * (-2)"), ("2 * (-2)", "-4", "-4")]
    assert reduction_steps("7 / 2 + 1")[-1][1] == "9/2"
    assert reduction_steps("12") == []
    with pytest.raises(ExpressionError):
        reduction_steps("open('x')")
    with pytest.raises(ZeroDivisionError):
        reduction_steps("1 / (2 - 2)")


@pytest.mark.parametrize("text", ["8 - (2 + 1)", "8 - 2 + 1", "2 * 3 / 4", "2 / (3 * 4)", "(1 + 2) * (3 - 4) / 5",
                                  "100 - (20 - (3 - 1))"])
def test_to_text_keeps_value_with_minimal_parentheses(text):
    tree = parse(text)
    assert evaluate(parse(to_text(tree))) == evaluate(tree) == Fraction(eval(text)).limit_denominator()
    assert to_text(parse(f"(({text}))")) == to_text(tree)


def test_arithmetic_trace_ends_at_the_gold_answer():
    ex = load_examples("arithmetic", n=60, seed=3, difficulty=[1, 2, 3, 4, 5])
    built = build(ex)
    assert 0 < len(built) < len(ex)                          # word problems have no expression: skipped
    for e in built:
        think, answer = R1.match(e.meta["completion"]).groups()
        assert answer == e.answer
        assert think.splitlines()[-1].endswith(f"= {e.answer}.")
    assert arithmetic_reasoning("3 + 4 * 5").splitlines()[1:] == ["4 * 5 = 20, so the expression becomes 3 + 20.",
                                                                  "3 + 20 = 23."]


def test_gsm8k_cold_start_strips_calculator_annotations():
    assert strip_calculator_annotations("48/2 = <<48/2=24>>24 clips") == "48/2 = 24 clips"
    ex = build(load_examples("gsm8k", path=str(FIXTURES / "gsm8k_train.jsonl")))
    assert ex[0].meta["completion"] == ("<think>\nShe bakes 12 * 4 = 48 muffins.\n"
                                        "After selling, 48 - 30 = 18 muffins are left.\n</think>\n<answer>18</answer>")
    assert all("<<" not in e.meta["completion"] and R1.match(e.meta["completion"]) for e in ex)
    assert ex[0].meta["rationale"].count("<<") == 2           # the input meta is kept as it was


def test_countdown_and_math_cold_start():
    from grpo.data.countdown import check_countdown
    for e in load_examples("cold_start", dataset="countdown", n=20, seed=2):
        think, answer = R1.match(e.meta["completion"]).groups()
        assert answer == e.meta["solution"] and check_countdown(answer, e.meta["numbers"], e.meta["target"])
        assert think.splitlines()[-2].endswith(f"= {e.meta['target']}")
    m = build(load_examples("math", path=str(FIXTURES / "math_train.jsonl")))
    assert m[0].meta["completion"].endswith(r"</think>" + "\n" + r"<answer>\frac{1}{2}</answer>")


def test_build_rejects_examples_without_solutions_and_records(tmp_path):
    with pytest.raises(DataError, match="worked solution"):
        build([Example(id="c-1", task="code", prompt="write f")])
    ex = build([Example(id="a-1", task="arithmetic", prompt="What is 2 + 3?", answer="5",
                        meta={"expression": "2 + 3"})])
    recs = to_records(ex)
    assert recs == [{"id": "a-1", "task": "arithmetic", "prompt": "What is 2 + 3?",
                     "completion": r1_target("We evaluate 2 + 3.\n2 + 3 = 5.", "5"), "answer": "5"}]
    path = write_jsonl(ex, tmp_path / "out" / "cold.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == recs
    with pytest.raises(DataError, match="another source"):
        load_examples("cold_start", dataset="cold_start")

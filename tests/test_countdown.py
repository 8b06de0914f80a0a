"""grpo.data.countdown: every generated task is solvable, generation is seeded, the checker is strict and safe."""
import pytest

from grpo.data import DataError, load_examples
from grpo.data.countdown import check_countdown, load


def test_every_task_solvable_by_its_gold_expression():
    ex = load(n=400, seed=11)
    for e in ex:
        assert check_countdown(e.meta["solution"], e.meta["numbers"], e.answer), e
        assert e.answer == str(e.meta["target"])
        assert str(e.meta["numbers"]) in e.prompt and e.answer in e.prompt


def test_options_respected():
    ex = load(n=200, seed=1, num_count=[3, 5], min_number=2, max_number=30, min_target=10, max_target=50)
    assert {len(e.meta["numbers"]) for e in ex} == {3, 5}
    assert all(2 <= x <= 30 for e in ex for x in e.meta["numbers"])
    assert all(10 <= e.meta["target"] <= 50 for e in ex)
    assert {len(e.meta["numbers"]) for e in load(n=20, seed=1, num_count=4)} == {4}


def test_deterministic_distinct_and_unique_ids():
    a, b, c = load(n=100, seed=5), load(n=100, seed=5), load(n=100, seed=6)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.prompt for e in a] != [e.prompt for e in c]
    assert len({e.prompt for e in a}) == 100 and len({e.id for e in a}) == 100
    assert a[0].id == "countdown-s5-00000" and a[0].task == "countdown"
    assert len(load_examples("countdown", n=50, seed=5)) == 50    # no prompt lost to deduplication


def test_bad_options():
    with pytest.raises(DataError, match="num_count"):
        load(n=5, num_count=[1])
    with pytest.raises(DataError, match="ranges"):
        load(n=5, min_target=50, max_target=10)
    with pytest.raises(DataError, match="n must be positive"):
        load(n=0)


@pytest.mark.parametrize("expr, numbers, target, ok", [
    ("(25 - 5) * 3", [3, 5, 25], 60, True),
    ("3 * (25 - 5)", [25, 5, 3], "60", True),            # target may be a string, numbers in any order
    ("(8 / 3) * 3", [8, 3, 3], 8, True),                  # exact rational arithmetic
    ("(25 - 5) * 3 = 60", [3, 5, 25], 60, True),          # a trailing "= target" is tolerated
    ("(25 - 5) * 3 = 61", [3, 5, 25], 60, False),
    ("25 - 5 * 3", [3, 5, 25], 60, False),                # precedence: 10, not 60
    ("(25 - 5) * 3", [3, 5, 25, 2], 60, False),           # a number left unused
    ("(25 - 5) * 3 * 1", [3, 5, 25], 60, False),          # a number not given
    ("(5 - 5) * 3 + 60", [5, 3, 60], 60, False),          # 5 used twice, given once
    ("60 / (5 - 5) + 3", [60, 5, 5, 3], 63, False),       # division by zero
    ("-3 + 63", [3, 63], 60, False),                      # unary minus is not an allowed operation
    ("2 ** 6 - 4", [2, 6, 4], 60, False),                 # power is not allowed
    ("6.0 * 10", [6, 10], 60, False),                     # only integer literals
    ("__import__('os').getpid()", [1], 1, False),         # no code, ever
    ("(1 + 2", [1, 2], 3, False),
    ("", [], 0, False),
    ("1" + " + 1" * 400, [1] * 401, 401, False),          # overly long text rejected before parsing
])
def test_check_countdown(expr, numbers, target, ok):
    assert check_countdown(expr, numbers, target) is ok


def test_check_countdown_non_string():
    assert check_countdown(None, [1], 1) is False
    assert check_countdown("1 + 2", [1, 2], "three") is False

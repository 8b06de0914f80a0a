"""The held-out-style sandbox suite (tests/sandbox_cases.py) in CI.

Benign programs (HumanEval/MBPP/APPS style) must score full marks: fast, always run. Hostile programs and
the 16-at-once round are the heavy stress part (`slow`): each must score 0 or None without raising, with
no escape (file written outside its directory, sentinel changed, signal reaching this process), no
sandbox process left after its call, and no change to this process (cwd, environment, open fds).
"""
import pytest

import sandbox_cases as S


@pytest.fixture(scope="module")
def benign_report():
    return S.run_suite(S.BENIGN, round_cases=[])


@pytest.fixture(scope="module")
def hostile_report():
    return S.run_suite(S.HOSTILE)


def _outcome(report, case):
    return next(o for o in report.outcomes if o.case.id == case.id)


@pytest.mark.parametrize("case", S.BENIGN, ids=[c.id for c in S.BENIGN])
def test_benign_program_scores_full_marks(case, benign_report):
    o = _outcome(benign_report, case)
    assert o.held, f"{case.id}: score {o.score!r}, error {o.error}"


def test_benign_runs_leave_nothing(benign_report):
    assert benign_report.escapes == [] and benign_report.leftovers == [] and benign_report.side_effects == []


@pytest.mark.slow
@pytest.mark.parametrize("case", S.HOSTILE, ids=[c.id for c in S.HOSTILE])
def test_hostile_program_is_held(case, hostile_report):
    o = _outcome(hostile_report, case)
    assert o.held, f"{case.id}: score {o.score!r}, error {o.error}"
    assert o.leftovers == [], o.leftovers


@pytest.mark.slow
def test_no_escapes_no_leftovers_no_side_effects(hostile_report):
    assert hostile_report.escapes == []
    assert hostile_report.leftovers == []
    assert hostile_report.side_effects == []


@pytest.mark.slow
def test_sixteen_at_once(hostile_report):
    assert hostile_report.round_total == 16
    assert hostile_report.round_held == 16


def test_suite_is_big_enough():
    assert len(S.HOSTILE) >= 100 and len(S.BENIGN) >= 40
    assert len({c.id for c in S.HOSTILE + S.BENIGN}) == len(S.HOSTILE + S.BENIGN)


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    S.cleanup()

"""Math answer extraction, equivalence conventions, the accuracy reward, and the timeout bound."""
import json
import threading
from pathlib import Path
import time

import pytest

from grpo.rewards.math import accuracy_reward, extract_answer, extract_gold, verify
from grpo.rewards.math.normalize import oversized_number, plain_number


@pytest.mark.parametrize("text,expected", [
    ("<think>so 3</think><answer>42</answer>", "42"),
    ("<answer>\n42\n</answer>", "42"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),
    ("<answer>so \\boxed{7}</answer>", "7"),
    ("we get \\boxed{\\frac{1}{2}} and finally \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
    ("first \\boxed{3} then truncated \\boxed{4", "3"),
    ("Natalia sold 48 clips.\n#### 72", "72"),
    ("So the answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("The final answer is 3.5. Done", "3.5"),
    ("I think it costs 1,250 dollars, or maybe 12", "12"),
    ("no numbers here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_without_fallback():
    assert extract_answer("it is 12", fallback=None) is None
    with pytest.raises(ValueError):
        extract_answer("x", fallback="first_number")


def test_gold_formats():
    assert extract_gold("Janet has 3 ... so 16-3=13\n#### 1,300") == "1,300"
    assert extract_gold("The area is $\\boxed{\\frac{\\pi}{4}}$.") == "\\frac{\\pi}{4}"
    assert extract_gold("18") == "18"


@pytest.mark.parametrize("gold,pred", [
    ("42", "42.0"), ("1000", "1,000"), ("1000", "1{,}000"), ("-3", "-3"), ("0.75", "\\frac{3}{4}"),
    ("\\frac34", "3/4"), ("\\dfrac{3}{4}", "0.75"), ("25", "25\\%"), ("10", "\\$10"), ("5", "5 cm"),
    ("5", "5\\text{ apples}"), ("1500", "1.5 \\times 10^{3}"), ("1500", "1.5e3"), ("\\frac52", "2\\frac{1}{2}"),
    ("\\frac{1}{\\sqrt2}", "\\frac{\\sqrt{2}}{2}"), ("2\\sqrt{3}", "\\sqrt{12}"), ("1024", "2^{10}"),
    ("\\pi", "\\pi"), ("2\\pi", "\\pi \\cdot 2"), ("3.14", "\\pi"), ("0.33", "\\frac13"), ("x^2+2x+1", "(x+1)^2"),
    ("5", "x=5"), ("30", "30^\\circ"), ("[1, 2)", "[1,2)"), ("\\{1,2,3\\}", "\\{3,1,2\\}"), ("(1, 2)", "(1,2)"),
    ("1, 2", "2, 1"), ("(-\\infty, 3]", "(-\\infty,3]"), ("B", "(b)"), ("\\text{(C)}", "C"),
    ("\\text{Monday}", "monday"), ("y = 2x + 3", "y=3+2x"),
    ("\\begin{pmatrix}1 & 2\\\\3 & 4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
])
def test_equivalent(gold, pred):
    assert verify(gold, pred)


@pytest.mark.parametrize("gold,pred", [
    ("42", "43"), ("0.75", "0.7"), ("\\frac13", "0.333"), ("2.5", "2.54"), ("[1, 2)", "(1,2)"),
    ("(1, 2)", "(2, 1)"), ("\\{1,2\\}", "\\{1,2,3\\}"), ("B", "C"), ("\\pi", "3"), ("x^2", "x^3"),
    ("\\sqrt{2}", "1.41"), ("5", "x=6"), ("1000", "100"), ("\\text{Monday}", "Tuesday"),
])
def test_not_equivalent(gold, pred):
    assert not verify(gold, pred)


def test_plain_number_fast_path_never_imports_sympy_for_numbers():
    assert plain_number("1,234.50").value * 100 == 123450
    assert plain_number("\\$12") is not None and plain_number("x+1") is None


def test_accuracy_reward_columns():
    completions = ["<answer>72</answer>", [{"role": "assistant", "content": "\\boxed{71}"}], "x = 3", "print(1)"]
    out = accuracy_reward(None, completions, answer=["72", "72", None, "1"], task=["gsm8k", "gsm8k", "math", "mbpp"])
    assert out == [1.0, 0.0, None, None]


def test_timeout_bounds_a_pathological_check_from_a_thread():
    result = {}

    def run():
        t0 = time.monotonic()
        result["ok"] = verify("1", "(x+1)^(99999999999)-x^99999999999", timeout=1.0)
        result["dt"] = time.monotonic() - t0

    th = threading.Thread(target=run)
    th.start()
    th.join(20)
    assert not th.is_alive()
    assert result["ok"] is False and result["dt"] < 5
    assert verify("\\frac{1}{\\sqrt2}", "\\frac{\\sqrt2}{2}")  # a fresh helper takes over after the kill


PAIRS = [json.loads(line) for line in (Path(__file__).parent / "data" / "rewards_math_pairs.jsonl").open()]


def test_agreement_with_human_labels():
    """The hand-labelled fixture (~170 gold/prediction pairs over every category of the conventions)."""
    wrong = [(p["gold"], p["pred"], p["label"]) for p in PAIRS if verify(p["gold"], p["pred"]) != p["label"]]
    assert len(PAIRS) >= 150
    assert len(wrong) <= len(PAIRS) * 0.03, wrong


def test_at_least_as_good_as_math_verify():
    mv = pytest.importorskip("math_verify")

    def theirs(p):
        try:
            return bool(mv.verify(mv.parse("$" + p["gold"] + "$"), mv.parse("$" + p["pred"] + "$")))
        except Exception:  # noqa: BLE001
            return False

    ours = sum(verify(p["gold"], p["pred"]) == p["label"] for p in PAIRS)
    assert ours >= sum(theirs(p) == p["label"] for p in PAIRS)


# --- the labelled set (tests/data/math_answer_pairs.jsonl: 1050 pairs in 30 categories, labelled by hand)

LABELLED = Path(__file__).parent / "data" / "math_answer_pairs.jsonl"
HOLDOUT = Path(__file__).parent / "data" / "math_answer_pairs_holdout.jsonl"


def _labelled(path=LABELLED):
    from grpo.rewards.bench import load_pairs
    return load_pairs(path)


def _ours_right(pairs) -> list[bool]:
    from grpo.rewards.math import verify_all
    return [v == p["label"] for v, p in zip(verify_all([p["gold"] for p in pairs], [p["pred"] for p in pairs]), pairs)]


def test_labelled_set_accuracy():
    """Unambiguous accuracy on the whole labelled set (ambiguous pairs are left out), and per category: no
    category may fall far behind the rest."""
    pairs = _labelled()
    assert len(pairs) >= 600 and len({p["category"] for p in pairs}) >= 25
    right = _ours_right(pairs)
    wrong = [(p["category"], p["gold"], p["pred"], p["label"]) for p, ok in zip(pairs, right) if not ok]
    assert sum(right) / len(pairs) >= 0.96, wrong[:30]
    for cat in {p["category"] for p in pairs}:
        got = [ok for p, ok in zip(pairs, right) if p["category"] == cat]
        assert sum(got) / len(got) >= 0.8, (cat, [w for w in wrong if w[0] == cat])


def _compare_with_math_verify(pairs):
    from grpo.rewards.bench import math_verify_judge
    judge = math_verify_judge()
    if judge is None:
        pytest.skip("math-verify (a dev dependency) is not installed")
    ours = sum(_ours_right(pairs))
    theirs = sum(judge(p["gold"], p["pred"]) == p["label"] for p in pairs)
    assert ours / len(pairs) >= 0.96 and ours >= theirs, (ours, theirs, len(pairs))


def test_labelled_sample_at_least_as_good_as_math_verify():
    """Every 4th unambiguous pair (every category is in it): math-verify takes ~30-80 ms a pair, so the whole
    set is the slow test below."""
    pairs = _labelled()[::4]
    assert len({p["category"] for p in pairs}) == len({p["category"] for p in _labelled()})
    _compare_with_math_verify(pairs)


@pytest.mark.slow
@pytest.mark.parametrize("path", [LABELLED, HOLDOUT], ids=["tuned", "holdout"])
def test_labelled_set_at_least_as_good_as_math_verify(path):
    _compare_with_math_verify(_labelled(path))


# the classes of #19 that gave false positives: a number with letters after it is not the number, and an
# assignment to one name is not an assignment to another
@pytest.mark.parametrize("gold,pred", [
    ("2", "2xy"), ("3ab", "3"), ("6", "6 ab^2"), ("3ba^2", "3"), ("6ab^2", "6a^2b"), ("7", "7ab"), ("5", "5 x"),
    ("8", "8 st"), ("4", "4 abc"), ("12", "12xyz"), ("9", "9 mn"), ("4", "4 xy^2"), ("2", "2 pq"), ("5x", "5"),
    ("10pq", "10"), ("24", "24 ab"), ("1", "1 ab"), ("2", "2 \\pi"), ("5\\text{ cm}", "5 m"), ("5 km", "5 m"),
    ("3 hours", "3 minutes"), ("8\\text{ cm}^3", "8 \\text{ cm}^2"), ("6 \\text{ feet}", "6 inches"),
])
def test_no_false_positive_monomials_and_units(gold, pred):
    assert not verify(gold, pred) and not verify(pred, gold)


@pytest.mark.parametrize("gold,pred", [
    ("x=5", "y=5"), ("k=3", "a=3"), ("x = 5", "t=5"), ("x_1=2", "x_2=2"), ("a=5", "b=5"), ("z=-2", "2=z"),
    ("x=3, y=-1", "x=3, z=-1"), ("x=2, y=5", "a=2, b=5"), ("(x,y)=(3,-1)", "(a,b)=(3,-1)"), ("f(x) = 2x", "g(x) = 2x"),
    ("\\theta = \\frac{\\pi}{4}", "\\phi = \\frac{\\pi}{4}"), ("x<3", "y<3"), ("t > 0", "s > 0"), ("x=1, y=2", "x=1"),
])
def test_no_false_positive_equation_names(gold, pred):
    assert not verify(gold, pred) and not verify(pred, gold)


@pytest.mark.parametrize("gold,pred", [  # what the two rules above must still accept
    ("5", "5 cm"), ("12", "12 apples"), ("3", "3 men"), ("5\\text{ cm}", "5 centimeters"), ("20\\text{ m}^2", "20 \\text{ square meters}"),
    ("3ab", "3ba"), ("3ba^2", "3a^2b"), ("5xy", "5 x y"), ("60 \\text{ mph}", "60 \\text{ miles per hour}"),
    ("x=5", "5"), ("5", "y=5"), ("x = 5", "5 = x"), ("(3,-1)", "(x, y) = (3, -1)"), ("(3,-1)", "y=-1, x=3"),
    ("y=2x+3", "2y=4x+6"), ("y = 2x + 3", "x = (y-3)/2"), ("-1,2", "x_1 = -1, x_2 = 2"),
])
def test_units_and_assignments_still_accepted(gold, pred):
    assert verify(gold, pred)


@pytest.mark.parametrize("gold,pred,equal", [  # the other classes of #19, one example each
    ("x \\le 3", "3 \\ge x", True), ("x \\le 3", "3 \\le x", False), ("(-\\infty,3]", "x\\le3", True),
    ("(2,\\infty)", "x\\ge2", False), ("\\mathbb{R}", "(-\\infty,\\infty)", True), ("\\varnothing", "\\emptyset", True),
    ("(-\\infty,-1)\\cup(2,\\infty)", "x<-1 \\text{ or } x>2", True), ("10000", "10,\\!000", True),
    ("10,\\!000", "1,000", False), ("\\frac13", "0.\\overline{3}", True), ("0.\\overline{3}", "0.3", False),
    ("\\pi", "π", True), ("-5", "−5", True), ("5", "−5", False), ("B", "\\textbf{(B)}", True), ("\\textbf{(D)}", "(E)", False),
])
def test_issue_19_classes(gold, pred, equal):
    assert verify(gold, pred) is equal


def test_pm_that_is_not_plus_minus_does_not_recurse():
    # "\\pme" (no \\pm command: a letter follows) was split into two copies of itself forever (RecursionError)
    from grpo.rewards.math.equivalence import answers_equal
    assert answers_equal("x_1:", "and2°e\\pme") is False
    assert answers_equal("1 \\mp 2", "-1, 3") is True


def test_inequalities_never_raise():
    from grpo.rewards.math.equivalence import answers_equal
    for gold, pred in [("3 \\ge x", "x \\le 3"), ("x > 2", "x - 2"), ("x<3", "3"), ("a < b < c", "c > b > a")]:
        assert isinstance(answers_equal(gold, pred), bool)


def test_number_words_and_units():
    assert verify("3", "three") and verify("20", "twenty") and not verify("3", "four")
    assert verify("0.5x", "\\frac{x}{2}") and verify("36\\pi", "36\\pi \\text{ cm}^2")


def _pathological(_):
    t0 = time.monotonic()
    ok = verify("1", "(x+1)^(99999999998)-x^99999999998", timeout=1.0)
    return ok, time.monotonic() - t0


def test_timeout_works_under_a_process_pool():
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=1) as pool:
        ok, seconds = pool.submit(_pathological, 0).result(timeout=60)
    assert ok is False and seconds < 5


def test_bench_runs_small():
    from grpo.rewards.bench import bench_math, _gsm8k_batch
    import random
    rate, slowest, wrong = bench_math(*_gsm8k_batch(300, random.Random(1)))
    assert wrong == 0 and rate > 0


def test_oversized_numbers_skip_the_exact_fast_path():
    # a sampled "1e12345678" once made one GRPO step's rewards take 68 s (Fraction builds the integer)
    for s in ["1e12345678", "-2.5E-99999999", "7" * 450, "3/" + "7" * 450]:
        assert plain_number(s) is None
        assert oversized_number(s)
    assert plain_number("1e3").value == 1000 and not oversized_number("1e3")
    assert not oversized_number("x+1") and not oversized_number("12")


def test_oversized_prediction_is_not_equal_to_a_plain_gold_without_the_helper(monkeypatch):
    import grpo.rewards.math as rm

    def no_helper(*a, **k):
        raise AssertionError("the sympy helper was asked")

    monkeypatch.setattr(rm.POOL, "check", no_helper)
    rm._verify_cached.cache_clear()
    assert not verify("23", "1e999999999")
    assert not verify("23", "9" * 500)
    assert verify("1000", "1e3")


def test_unit_tail_regex_has_no_catastrophic_backtracking():
    # "12 " + a long run of letters that is not a unit list used to split the letters into 2+-letter chunks
    # in exponentially many ways (a GRPO step's rewards stalled for minutes); the alarm turns a hang into
    # a failure instead of a stuck CI job
    import signal

    from grpo.rewards.math.normalize import drop_units

    def hung(*_):
        raise TimeoutError("drop_units backtracked")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        assert drop_units("12 " + "a" * 60 + "!") == "12 " + "a" * 60 + "!"
        assert drop_units("5 " + "apples " * 40 + "?").startswith("5 apples")
        assert not verify("12", "12 " + "b" * 80 + ";")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert drop_units("5 cm") == "5" and drop_units("3 km^2") == "3" and drop_units("7 ft.") == "7"


# --- fast paths: each must give what the slower way gives, on inputs picked to trip it up

_TRICKY_TEXTS = [
    "", "no digits", "12", "-3", ".5", "-.5", "1,234,567.89", "1,23,456", "12,3456", "3 / 4", "3/ 4 and 5 /6",
    "x-1", "a1b2c3", "१३६ is it", "3.14.15", "2.-5", "1,000,", "- 7", "7 -", "end 42.", "mixed 4 ½ 9", "٣٤ / ٥",
    "tail 12\u00a0/\u20037", "Answer is 5", "THE FINAL ANSWER IS: 7\nthen", "the answer is answer is 5.",
    "the  final\tanswer   is：x. the answer is 6", "final answer is 1.5. So", "anſwer is 3.", "the answer is",
    "answer is 5.the answer is 6.", "thefinal answer is 2", "the the answer is 9\n", "answer\nis\n4.",
]


@pytest.mark.parametrize("text", _TRICKY_TEXTS + [t * 3 for t in _TRICKY_TEXTS if t])
def test_fast_extraction_regexes_agree_with_the_full_patterns(text):
    import re

    from grpo.rewards.math.extract import _ANSWER_IS, _NUMBER, last_number

    full = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?\s*(.+?)(?:\.(?:\s|$)|\n|$)", re.IGNORECASE)
    assert _ANSWER_IS.findall(text) == full.findall(text)
    nums = _NUMBER.findall(text)
    assert last_number(text) == (nums[-1].replace(" ", "") if nums else None)


@pytest.mark.parametrize("gold", ["843", "0", "-2.5", "1,000", "three", "25\\%", "\\frac{1}{2}", "5 red apples"])
@pytest.mark.parametrize("pred", ["", "\\,", "\\quad", "or", "and", " , ", "\\boxed{}", "\\$", "^\\circ", "."])
def test_empty_prediction_against_a_number_skips_the_helper_and_agrees(monkeypatch, gold, pred):
    import grpo.rewards.math as rm
    from grpo.rewards.math.equivalence import answers_equal, normalise

    def no_helper(*a, **k):
        raise AssertionError("the sympy helper was asked")

    assert plain_number(gold) is not None and normalise(pred) == ""
    monkeypatch.setattr(rm.POOL, "check", no_helper)
    rm._verify_cached.cache_clear()
    assert verify(gold, pred) is answers_equal(gold, pred) is False


_SYMBOLIC_PAIRS = [  # (gold, pred): the sympy path with and without skipping simplify must agree
    ("81", "correct"), ("322", "a simplified equation of 11.5 + 7"), ("427", "DY+BBA/3+DY+BBA"),
    ("1", "iiii"), ("-1", "ii"), ("1", "\\sin^2 x + \\cos^2 x"), ("2", "\\sin^2 x + \\cos^2 x + 1"),
    ("x+1", "\\frac{x^2-1}{x-1}"), ("2x", "\\frac{x^2-1}{x-1}"), ("0.1x", "\\frac{x}{10}"),
    ("x^2+2x+1", "(x+1)^2"), ("x^2+2x", "(x+1)^2"), ("e^{x}e^{y}", "e^{x+y}"), ("\\log(xy)", "\\log x + \\log y"),
    ("\\sqrt{x^2}", "x"), ("0.5\\sin(2x)", "\\sin(x)\\cos(x)"), ("(x+1)^{30}", "(x+1)^{30} + 10^{-40}"),
    ("y = 2x + 3", "y=3+2x"), ("25\\%", "x/4"), ("5", "x+5-x"), ("7", "the answer 7"),
    # the first point is x = 50/13: a removable singularity there must not count as a difference
    ("x + \\frac{50}{13}", "\\frac{x^2 - \\frac{2500}{169}}{x - \\frac{50}{13}}"), ("1", "\\frac{1}{x - \\frac{50}{13}}"),
    # 30-digit noise of a huge difference that simplify makes 0
    ("5", "10^{40} x (\\sin^2(x)+\\cos^2(x)) - 10^{40} x + 5"), ("10^{30} x", "10^{30} x (\\sin^2(x) + \\cos^2(x))"),
    ("0.1\\sin^2(x) + 0.1\\cos^2(x)", "0.1"), ("\\frac{1}{3}x", "0.333333333333333x"),
    ("x^{2000}", "x^{2000}(\\sin^2(x)+\\cos^2(x))"), ("3", "x^{2000}"),
]


@pytest.mark.parametrize("gold,pred", _SYMBOLIC_PAIRS)
def test_skipping_simplify_where_a_point_differs_agrees_with_the_full_check(monkeypatch, gold, pred):
    import grpo.rewards.math.equivalence as eq

    fast = eq.answers_equal(gold, pred)
    monkeypatch.setattr(eq, "_differs_at", lambda *a: False)  # the original order: simplify, then the points
    assert fast == eq.answers_equal(gold, pred)


def test_a_sentence_against_a_number_does_not_run_simplify(monkeypatch):
    import sympy

    import grpo.rewards.math.equivalence as eq

    def no_simplify(*a, **k):
        raise AssertionError("simplify ran")

    monkeypatch.setattr(sympy, "simplify", no_simplify)
    assert not eq.answers_equal("322", "a simplified equation of 11.5 + 7")
    assert not eq.answers_equal("x^2", "x^3")


@pytest.mark.parametrize("src", ["x", "2 pi r", "\\sin x", "max(3, 5)", "min(x, 2)", "abs(-3)", "round(2.5)",
                                 "pow(2, 10)", "len(x)", "S(1)/3", "N(pi)", "gamma(5) + beta",
                                 "Q", "lambda", "E + e + i + I", "x!", "really that it will double", "1,2", ""])
def test_parser_namespace_built_once_parses_as_sympys_default(monkeypatch, src):
    import sympy.parsing.sympy_parser as sp

    from grpo.rewards.math.equivalence import _sympy_expr

    def outcome():
        try:
            return _sympy_expr(src)
        except Exception as e:  # noqa: BLE001 - the same failure is the same outcome
            return type(e)

    fast = outcome()
    default = sp.parse_expr
    monkeypatch.setattr(sp, "parse_expr", lambda *a, global_dict=None, **k: default(*a, **k))
    assert outcome() == fast


# --- hostile answers: sympy's parser evals the answer; the helper's reply channel and namespace must hold

_HOSTILE = ["print(5)", "exit()", "quit()", "input()", "help()", "breakpoint()", "__import__('os').system('echo hi')",
            'open("/etc/passwd")', "eval(x)", "exec(x)", "pprint(x)", "print_tree(x)", "S(chr(53))", "sympify(chr(53))",
            "f(x)[0]", "Max(*x)", "x.y"]


@pytest.mark.parametrize("pred", _HOSTILE)
def test_hostile_answer_is_not_equal_runs_nothing_and_keeps_the_helper(pred, capfd):
    import grpo.rewards.math as rm

    rm._verify_cached.cache_clear()
    assert verify("5", "2+3")  # a warm helper, so the time below is the check's alone
    pids = [h.proc.pid for h in rm.POOL.idle]
    t0 = time.monotonic()
    assert verify("5", pred) is False
    assert time.monotonic() - t0 < 3  # input() once waited for a request line until the 5 s timeout
    assert verify("5", "5") and verify("5", "3+2")
    assert [h.proc.pid for h in rm.POOL.idle] == pids and all(h.proc.poll() is None for h in rm.POOL.idle)
    assert capfd.readouterr().out == ""


def test_a_string_built_at_parse_time_is_not_run_as_code(tmp_path_factory):
    # this answer made the helper run a shell command: sympy parses a string with its full default namespace
    import grpo.rewards.math as rm

    target = tmp_path_factory.mktemp("pwn") / "x"
    assert "_" not in str(target)  # latex_to_sympy_source would read an underscore as a subscript
    code = f'("os").system("touch {target}")'
    pred = "S(chr(95)+chr(95)+'import'+chr(95)+chr(95)+'" + code + "')"
    rm._verify_cached.cache_clear()
    assert verify("0", pred) is False and verify("5", "3+2")
    assert not target.exists()


def test_parser_namespace_has_no_python_io_exec_or_printers():
    from grpo.rewards.math.equivalence import _parser_globals, _sympy_expr

    g = _parser_globals()
    for name in ["print", "exit", "quit", "open", "input", "exec", "eval", "compile", "breakpoint", "help", "chr",
                 "getattr", "__import__", "parse_expr", "lambdify", "latex", "srepr", "sstr", "pprint",
                 "print_latex", "preview", "init_session", "test", "python", "pycode", "var"]:
        assert name not in g, name
    assert g["__builtins__"] == {}
    assert g["max"] is not max and g["abs"] is abs
    with pytest.raises(TypeError):
        g["S"]("1+1")
    assert g["S"](1) == 1 and g["sympify"](2) == 2
    assert not _sympy_expr("print(5)").atoms(__import__("sympy").core.function.AppliedUndef)  # symbols, no call


@pytest.mark.parametrize("src,ok", [
    ("3.5x + .5", True), ("[1, 2]", True), ("x**2 - 2*x", True), ("f(x) + (1, 2)", True), ("5!", True),
    ("x if y else [3]", True), ("'5'", False), ('"5"', False), ("x.y", False), ("(x).y", False), ("x[0]", False),
    ("f(x)[0]", False), ("[1][0]", False), ("f(*x)", False), ("f(x, **y)", False),
])
def test_source_screen(src, ok):
    from grpo.rewards.math.equivalence import _screen_source

    if ok:
        _screen_source(src)
    else:
        with pytest.raises(ValueError):
            _screen_source(src)


def test_helper_reply_channel_is_private():
    # what the helper evaluates may print, prompt, or write to fd 1 from C or a child process: none of it may
    # reach the reply pipe, and nothing may read the request pipe
    import subprocess
    import sys

    code = ("import os, sys\n"
            "from grpo.rewards.math.bounded import _private_channel, _send\n"
            "requests, replies = _private_channel()\n"
            "print('junk'); sys.stdout.flush(); os.write(1, b'junk\\n'); os.system('echo junk')\n"
            "try:\n    input()\nexcept EOFError:\n    pass\n"
            "_send(replies, {'echo': requests.readline().decode()})\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], input=b"request\n", capture_output=True, cwd=root, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"echo": "request\n"}


def test_a_garbled_reply_is_a_helper_failure_not_a_type_error():
    # print(5) once made the helper answer "5": the caller crashed with TypeError and training stopped
    import subprocess
    import sys

    from grpo.rewards.math.bounded import HelperFailed, _Helper

    def fake_helper(reply):
        helper = object.__new__(_Helper)
        helper.buf = b""
        helper.proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.stdin.readline(); print({reply!r})"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return helper

    helper = fake_helper('{"equal": true}')
    assert helper.ask("5", "x", timeout=30) is True
    helper.kill()
    for reply in ["5", "not json", '{"equal": 1}', '{"equal": true}\n{"equal": false}']:
        helper = fake_helper(reply)
        with pytest.raises(HelperFailed):
            helper.ask("5", "x", timeout=30)
        helper.kill()


def test_a_helper_failing_on_a_prediction_scores_it_not_equal(monkeypatch):
    import grpo.rewards.math as rm
    from grpo.rewards.math.bounded import HelperFailed

    real = rm.POOL.check

    def dies_on_boom(gold, pred, timeout):
        if pred == "boom":
            raise HelperFailed("verifier helper exited")
        return real(gold, pred, timeout)

    monkeypatch.setattr(rm.POOL, "check", dies_on_boom)
    rm._verify_cached.cache_clear()
    assert verify("5", "boom") is False and verify("5", "3+2")

    def always_dies(gold, pred, timeout):
        raise HelperFailed("verifier helper exited")

    monkeypatch.setattr(rm.POOL, "check", always_dies)  # a helper that cannot check anything is not the answer's fault
    rm._verify_cached.cache_clear()
    with pytest.raises(HelperFailed):
        verify("5", "x+5-x")


def test_a_capital_o_is_a_letter_not_sympys_order_term():
    """A sampled sentence starting with "Omega..." parsed O as sympy's Order: the comparison ran series code
    for ~1 s and raised TypeError (the helper then scored it False). O is now a plain symbol."""
    from grpo.rewards.math.equivalence import answers_equal

    assert answers_equal("639", "Omegacss overcame nation Editionaho askingaidaxis") is False
    assert answers_equal("O + 1", "1 + O") is True

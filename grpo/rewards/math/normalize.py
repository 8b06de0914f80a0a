r"""Text-level normalisation of answers, the plain-number fast path, and LaTeX -> sympy source text.

Nothing here imports sympy: `plain_number` is the fast path used for GSM8K-style answers, and
`latex_to_sympy_source` only rewrites text (sympy parses it later, inside the bounded worker).

Conventions (see grpo.rewards.math for the full list): thousands separators are commas between groups of
exactly three digits (``1,000``, ``1{,}000``, ``1\,000``); a leading currency sign (``$``, ``\$``, ``€``,
``£``, ``¥``) and trailing unit words (``5 cm``, ``12 apples``, ``5\text{ cm}^2``) are ignored;
``^\circ`` and ``°`` are dropped; a trailing ``%`` is kept as a flag (handled by the comparison); a mixed
number ``2\frac{1}{2}`` means 5/2; a number word up to twenty (and the tens, hundred, thousand,
million) is that number. A unit must be a word of two or more letters or a ``\text{}``: ``0.5x`` is an
expression, ``5 cm`` a number.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad|\\displaystyle|\\textstyle|\\left|\\right|\\big|\\Big|~")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname|mathit|rm)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ|\\degree")
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£|¥|\\euro|USD|usd)\s*")
_UNIT_TAIL = re.compile(r"^([+-]?(?:\d[\d,]*\.?\d*|\.\d+)(?:\s*/\s*\d+)?)\s*(?:(?:\\text\{[^{}]*\}|\\mbox\{[^{}]*\}|\\mathrm\{[^{}]*\}|[A-Za-z]{2,}(?![A-Za-z])\.?)"
                        r"(?:\^\{?\d\}?)?\s*)+$")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:(?:,|\{,\}|\\,)\d{3})+)(?![\d])")
# bounds of the fast path: a sampled "answer" such as 1e12345678 made one GRPO step's rewards take 68 s
# (Fraction builds the integer); beyond these the text goes to the time-limited helper (or compares as text)
MAX_DIGITS = 400
MAX_EXPONENT = 400
MAX_UNIT_ANSWER_CHARS = 200
_DECIMAL = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_SCI_LATEX = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?$")
_SIMPLE_FRAC = re.compile(r"^([+-]?)\s*(?:\\[dtc]?frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*([+-]?\d+)\s*\}"
                          r"|\\[dtc]?frac\s*(\d)\s*(\d)|(\d+)\s*/\s*(\d+))$")
_MIXED = re.compile(r"^([+-]?)(\d+)\s*\\[dtc]?frac\s*\{(\d+)\}\s*\{(\d+)\}$")
_UNIT_WORDS_KEEP = {"pi", "e", "i", "sqrt"}  # words that are mathematics, not units
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
                     "ninety": 90, "hundred": 100, "thousand": 1000, "million": 10 ** 6})


def strip_text_commands(s: str) -> str:
    r"""`\text{abc}` -> `abc` (and \mathrm, \mbox, \textbf...), repeatedly for nesting."""
    prev = None
    while prev != s:
        prev, s = s, _TEXT_CMD.sub(r"\1", s)
    return s


def clean(s: str) -> str:
    """Spacing commands, sizing, degrees, currency and thousands separators removed; whitespace squeezed."""
    s = s.strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = _SPACING.sub(" ", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "%").replace("\\$", "$")
    s = _CURRENCY.sub("", s.strip())
    s = _THOUSANDS.sub(lambda m: m.group(1) + re.sub(r"\D", "", m.group(2)), s)
    s = re.sub(r"\s+", " ", s).strip()
    return s.rstrip(".").strip()


def drop_units(s: str) -> str:
    """'5 cm' -> '5', '12\\text{ apples}' -> '12'; unchanged if what follows the number is mathematics.
    Each unit word must be a maximal run of letters: with `[A-Za-z]{2,}` alone a long word could be split
    into chunks in exponentially many ways, and a sampled answer like "12 apples...!" stalled the regex
    for over a minute (a GRPO step's rewards on the H100). Longer inputs are not "number + unit" answers."""
    if len(s) > MAX_UNIT_ANSWER_CHARS:
        return s
    m = _UNIT_TAIL.match(s)
    if not m:
        return s
    tail = s[len(m.group(1)):]
    words = re.findall(r"[A-Za-z]+", strip_text_commands(tail))
    if any(w in _UNIT_WORDS_KEEP for w in words):
        return s
    return m.group(1).strip()


@dataclass(frozen=True)
class Number:
    """A plain number: exact value, whether it carried a % sign, decimal places written (None if not a
    decimal), and whether it was written as a terminating decimal/integer (for the rounding rule)."""

    value: Fraction
    percent: bool = False
    places: int | None = None


def plain_number(s: str) -> Number | None:
    """Fast path: the answer as an exact number if it is one in plain form, else None. Never uses sympy."""
    s = drop_units(clean(s))
    percent = s.endswith("%")
    if percent:
        s = s[:-1].strip()
    s = s.replace(" ", "")
    if s.lower() in NUMBER_WORDS:
        return Number(Fraction(NUMBER_WORDS[s.lower()]), percent)
    if s.startswith("(") and s.endswith(")") and "," not in s:
        s = s[1:-1]
    if _DECIMAL.match(s):
        if _decimal_too_big(s):
            return None  # Fraction("1e9999999") alone takes seconds: such numbers are not GSM8K/MATH answers
        mantissa, sci, _ = s.lower().partition("e")
        places = len(mantissa.split(".")[1]) if "." in mantissa and not sci else None
        return Number(Fraction(s), percent, places)
    m = _SCI_LATEX.match(s)
    if m:
        exp = int(m.group(2))
        if abs(exp) > MAX_EXPONENT or len(m.group(1)) > MAX_DIGITS:
            return None
        return Number(Fraction(m.group(1)) * Fraction(10) ** exp, percent)
    m = _SIMPLE_FRAC.match(s)
    if m:
        sign = -1 if m.group(1) == "-" else 1
        num, den = next((m.group(i), m.group(i + 1)) for i in (2, 4, 6) if m.group(i) is not None)
        if max(len(num), len(den)) > MAX_DIGITS or int(den) == 0:
            return None
        return Number(sign * Fraction(int(num), int(den)), percent)
    m = _MIXED.match(s)
    if m and max(len(g) for g in m.groups()[1:]) <= MAX_DIGITS and int(m.group(4)) != 0:
        sign = -1 if m.group(1) == "-" else 1
        return Number(sign * (int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))), percent)
    return None


def _decimal_too_big(s: str) -> bool:
    """A `_DECIMAL` string beyond the fast path's bounds (mantissa digits or exponent)."""
    mantissa, _, exp = s.lower().partition("e")
    return len(mantissa) > MAX_DIGITS or bool(exp) and abs(int(exp)) > MAX_EXPONENT


def oversized_number(s: str) -> bool:
    """A plain decimal (or a/b) beyond the fast path's bounds, e.g. 1e12345678: no bounded gold equals it,
    so callers can say "not equal" without sympy (which would only run into its time limit)."""
    s = drop_units(clean(s)).rstrip("%").replace(" ", "")
    if _DECIMAL.match(s):
        return _decimal_too_big(s)
    m = re.fullmatch(r"[+-]?(\d+)/(\d+)", s)
    return bool(m) and max(len(m.group(1)), len(m.group(2))) > MAX_DIGITS


# ------------------------------------------------------------------------ LaTeX -> sympy source text
_FUNCS = ("arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sin", "cos", "tan", "cot", "sec", "csc",
          "log", "ln", "exp")
_SYMBOLS = {"pi": " pi ", "infty": " oo ", "infinity": " oo ", "cdot": "*", "times": "*", "div": "/",
            "alpha": " alpha ", "beta": " beta ", "gamma": " gamma ", "theta": " theta ", "phi": " phi ",
            "lambda": " lamda ", "mu": " mu ", "sigma": " sigma ", "omega": " omega ", "tau": " tau ",
            "le": "<=", "leq": "<=", "ge": ">=", "geq": ">=", "neq": "!=", "ne": "!="}


def _group(s: str, i: int) -> tuple[str, int]:
    """The argument starting at s[i]: a {...} group (braces matched), a \\command, or one character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ValueError("missing argument")
    if s[i] == "{":
        depth = 0
        for k in range(i, len(s)):
            depth += {"{": 1, "}": -1}.get(s[k], 0)
            if depth == 0:
                return s[i + 1:k], k + 1
        raise ValueError("unbalanced braces")
    if s[i] == "\\":
        m = re.match(r"\\[A-Za-z]+", s[i:])
        if m:
            return m.group(0), i + len(m.group(0))
    return s[i], i + 1


def latex_to_sympy_source(s: str) -> str:
    r"""Rewrite a LaTeX expression as text for sympy's `parse_expr` (\frac, \sqrt[n], ^, functions, pi)."""
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+)", s[i:])
            if not m:
                out.append(" ")
                i += 2 if i + 1 < len(s) else 1
                continue
            name, i = m.group(1), i + len(m.group(0))
            if name in ("frac", "dfrac", "tfrac", "cfrac", "binom"):
                a, i = _group(s, i)
                b, i = _group(s, i)
                fa, fb = latex_to_sympy_source(a), latex_to_sympy_source(b)
                out.append(f"binomial({fa},{fb})" if name == "binom" else f"(({fa})/({fb}))")
            elif name == "sqrt":
                root = None
                if i < len(s) and s[i] == "[":
                    close = s.index("]", i)
                    root, i = s[i + 1:close], close + 1
                a, i = _group(s, i)
                arg = latex_to_sympy_source(a)
                out.append(f"sqrt({arg})" if root is None else f"(({arg})**(1/({latex_to_sympy_source(root)})))")
            elif name == "log" and i < len(s) and s[i] == "_":
                base, i = _group(s, i + 1)
                out.append(f"(1/log({latex_to_sympy_source(base)}))*log ")
            elif name in _FUNCS:
                out.append(" log " if name == "ln" else f" {name} ")
            elif name in _SYMBOLS:
                out.append(_SYMBOLS[name])
            else:
                out.append(" ")  # unknown command (\mathrm, \left ...): drop the command, keep its argument
            continue
        if c == "{":
            out.append("(")
        elif c == "}":
            out.append(")")
        elif c == "^":
            out.append("**")
        elif c == "_":  # subscripts become part of the name: x_1 -> x1, a_{10} -> a10
            a, i = _group(s, i + 1)
            out.append(re.sub(r"\W", "", a))
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)

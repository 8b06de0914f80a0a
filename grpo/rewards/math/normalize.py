r"""Text-level normalisation of answers and the plain-number fast path. No sympy here: `plain_number` decides
GSM8K-style answers in-process, and everything else is only rewritten as text.

`clean` (used on every answer): math-mode wrappers (``$…$``, ``\(…\)``, ``\[…\]``) and a whole-answer
``\boxed{}`` are taken off; Unicode is read as its LaTeX (``π``, the minus sign ``−``, ``√2``, ``×``, ``·``,
``≤``, ``½``, ``x²``, ``∅``, ``ℝ``); ``\dfrac``/``\tfrac`` are ``\frac``; sizing and spacing commands go;
relation commands become ``<=``, ``>=``, ``!=`` (``\leq``, ``\geqslant``, ``\ne``, ``\lt``); degrees of any spelling
become ``°``; ``\%`` and ``\text{\%}`` are ``%``; thousands separators are removed (``1,000``, ``10,\!000`` —
MATH's own —, ``10{,}000``, ``10\,000``, ``10 000``: groups of exactly three digits); a repeating decimal
becomes its fraction (``0.\overline{3}``, ``0.1\overline{6}``, ``0.\dot{3}``, ``0.333\ldots`` -> ``\frac{1}{3}``,
``\frac{1}{6}``); a final full stop goes.

`plain_number`: the exact value of an answer that is a plain number — an integer, decimal, ``a/b``,
``\frac{a}{b}``, a mixed number ``2\frac{1}{2}`` (= 5/2), scientific notation (``1.5e3``,
``1.5\times10^{3}``), a number word up to twenty and the tens, hundred, thousand, million — with a ``%``
flag and its unit (see `grpo.rewards.math.units`), or None.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from grpo.rewards.math.units import MAX_UNIT_ANSWER_CHARS, Unit, drop_units, split_units  # noqa: F401

_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad|\\displaystyle|\\textstyle|\\scriptstyle|\\left(?![a-z])|\\right(?![a-z])"
                      r"|\\[bB]igg?[lr]?(?![a-z])|~|\\hspace\{[^{}]*\}")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox|operatorname|mathit|rm|bf)"
                       r"\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|\^\s*\{\s*°\s*\}|\^\s*°")
_RELATIONS = [(re.compile(p), r) for p, r in [
    (r"\\(?:leqslant|leq|le)(?![A-Za-z])|≤|⩽", "<="), (r"\\lt(?![A-Za-z])", "<"),
    (r"\\(?:geqslant|geq|ge)(?![A-Za-z])|≥|⩾", ">="), (r"\\gt(?![A-Za-z])", ">"),
    (r"\\(?:neq|ne)(?![A-Za-z])|≠", "!=")]]
_UNICODE = {"−": "-", "–": "-", "‐": "-", "－": "-", "﹣": "-", "π": r"\pi ", "×": r"\times ", "·": r"\cdot ",
            "⋅": r"\cdot ", "∙": r"\cdot ", "÷": r"\div ", "∞": r"\infty ", "∅": r"\emptyset ", "ℝ": r"\mathbb{R}",
            "ℤ": r"\mathbb{Z}", "ℕ": r"\mathbb{N}", "ℚ": r"\mathbb{Q}", "ℂ": r"\mathbb{C}", "∪": r"\cup ",
            "∩": r"\cap ", "∈": r"\in ", "±": r"\pm ", "∓": r"\mp ", "θ": r"\theta ", "α": r"\alpha ", "β": r"\beta ",
            "γ": r"\gamma ", "φ": r"\phi ", "λ": r"\lambda ", "μ": r"\mu ", "σ": r"\sigma ", "ω": r"\omega ",
            "…": r"\ldots ", "′": "'", "：": ":", "，": ", ", "\u00a0": " ", "\u2009": " ", "\u202f": " ",
            "\u2002": " ", "\u2003": " ", "∛": r"\sqrt[3]", "⟨": r"\langle ", "⟩": r"\rangle ",
            "½": r"\frac{1}{2}", "⅓": r"\frac{1}{3}", "⅔": r"\frac{2}{3}", "¼": r"\frac{1}{4}", "¾": r"\frac{3}{4}",
            "⅕": r"\frac{1}{5}", "⅖": r"\frac{2}{5}", "⅗": r"\frac{3}{5}", "⅘": r"\frac{4}{5}", "⅙": r"\frac{1}{6}",
            "⅚": r"\frac{5}{6}", "⅛": r"\frac{1}{8}", "⅜": r"\frac{3}{8}", "⅝": r"\frac{5}{8}", "⅞": r"\frac{7}{8}"}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
_SUPERSCRIPT_RUN = re.compile(r"[⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+")
_ROOT_SIGN = re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z]|\\pi|\([^()]*\)|\{[^{}]*\})")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:(?:,\\!|\{,\}|,|\\,|\\ |\\;|\\!| )\d{3})+)(?![\d])")
_REPEATING = re.compile(r"(?<![\d.])(\d*)\.(\d*)\\(?:overline|bar|dot)\s*(?:\{(\d+)\}|(\d))")
_ELLIPSIS = re.compile(r"(?<![\d.])(\d*)\.(\d+)\s*(?:\\ldots|\\cdots|\\dots|\.\.\.)")
_BASE_SUBSCRIPT = re.compile(r"(?<![\w\\.])([0-9A-Z]*\d[0-9A-Z]*)_\{?\(?([2-9]|[1-3]\d)\)?\}?(?![\w{])")
_OVER = re.compile(r"\{([^{}]*)\\over(?![A-Za-z])([^{}]*)\}")
_PLAIN = re.compile(r"\s*-?\d[\d,]*(?:\.\d+)?\s*$")
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
# bounds of the fast path: a sampled "answer" such as 1e12345678 made one GRPO step's rewards take 68 s
# (Fraction builds the integer); beyond these the text goes to the time-limited helper (or compares as text)
MAX_DIGITS = 400
MAX_EXPONENT = 400
_DECIMAL = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_SCI_LATEX = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?$")
_POWER_OF_TEN = re.compile(r"^([+-]?)10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?$")
_SIMPLE_FRAC = re.compile(r"^([+-]?)\s*(?:\\frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*([+-]?\d+)\s*\}"
                          r"|\\frac\s*(\d)\s*(\d)|(\d+)\s*/\s*(\d+))$")
_MIXED = re.compile(r"^([+-]?)(\d+)\s*\\frac\s*(?:\{(\d+)\}\s*\{(\d+)\}|(\d)(\d))$")
_SCALES = {"thousand": 10 ** 3, "million": 10 ** 6, "billion": 10 ** 9, "trillion": 10 ** 12}
_SCALE_WORD = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(thousand|million|billion|trillion)$", re.IGNORECASE)
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


def _whole_group(s: str, prefix: str) -> str | None:
    r"""The inside of `prefix{…}` when that group is the whole of s (``\boxed{…}``), else None."""
    if not (s.startswith(prefix + "{") and s.endswith("}")):
        return None
    depth = 0
    for k in range(len(prefix), len(s)):
        depth += {"{": 1, "}": -1}.get(s[k], 0)
        if depth == 0:
            return s[len(prefix) + 1:-1] if k == len(s) - 1 else None
    return None


def strip_wrappers(s: str) -> str:
    r"""Take off math-mode delimiters and a whole-answer ``\boxed{}``/``\fbox{}`` (repeatedly) and a final full stop."""
    s = s.strip()
    if not s or (s[0] not in "$\\" and s[-1] != "."):
        return s  # nothing to take off (most answers: the fast path's numbers)
    prev = None
    while prev != s:
        prev = s = s.strip()
        for left, right in _WRAPPERS:
            if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right) and not s.endswith("\\" + right):
                s = s[len(left): len(s) - len(right)]
                break
        for box in ("\\boxed", "\\fbox"):
            inner = _whole_group(s, box)
            if inner is not None:
                s = inner
        s = s.rstrip(".").rstrip()
    return s


def _repeating_value(whole: str, fixed: str, period: str) -> str:
    """``\\frac{p}{q}`` for whole.fixed(period)(period)..."""
    q = 10 ** len(fixed) * (10 ** len(period) - 1)
    p = int(whole or "0") * q + int((fixed + period) or "0") - int(fixed or "0")
    f = Fraction(p, q)
    return f"\\frac{{{f.numerator}}}{{{f.denominator}}}"


def _ellipsis(m: re.Match) -> str:
    """0.333... / 0.1666...: the shortest period (and shortest non-repeating start) seen at least twice."""
    whole, digits = m.group(1), m.group(2)
    if len(digits) > 40:  # the search is cubic in the digits; no answer writes a period this long
        return m.group(0)
    for start in range(len(digits)):
        for p in range(1, (len(digits) - start) // 2 + 1):
            tail, period = digits[start:], digits[start:start + p]
            if (period * len(tail))[:len(tail)] == tail:
                return _repeating_value(whole, digits[:start], period)
    return m.group(0)


def _unicode(s: str) -> str:
    s = _SUPERSCRIPT_RUN.sub(lambda m: "^{" + m.group(0).translate(_SUPERSCRIPT) + "}", s)
    s = _ROOT_SIGN.sub(lambda m: "\\sqrt{" + m.group(1) + "}", s)
    s = s.replace("√", "\\sqrt")
    return _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)


def clean(s: str) -> str:
    """The conventions of the module docstring, applied to one answer's text."""
    if _PLAIN.match(s):  # the GSM8K fast path: digits, commas, one decimal point
        return _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s.strip()) if "," in s else s.strip()
    s = _unicode(s.strip()) if not s.isascii() else s.strip()
    s = strip_wrappers(s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = s.replace("\\dbinom", "\\binom").replace("\\tbinom", "\\binom")
    s = re.sub(r"\\langle(?![A-Za-z])", "(", re.sub(r"\\rangle(?![A-Za-z])", ")", s))
    s = re.sub(r"\\lbrace(?![A-Za-z])", "\\{", re.sub(r"\\rbrace(?![A-Za-z])", "\\}", s))
    if "_" in s:  # 1011_2, A3_{16}: a numeral in base b is its digits (Python would read 1011_2 as 10112)
        s = _BASE_SUBSCRIPT.sub(r"\1", s)
    if "\\over" in s:
        s = _OVER.sub(r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\(?:text|mbox|mathrm)\s*\{\s*\\?%\s*\}", "%", s).replace("\\%", "%").replace("\\$", "$")
    s = _THOUSANDS.sub(lambda m: m.group(1) + re.sub(r"\D", "", m.group(2)), s)
    s = _SPACING.sub(" ", s)
    s = _DEGREES.sub("°", s)
    for pattern, repl in _RELATIONS:
        s = pattern.sub(repl, s)
    if "." in s:
        s = _REPEATING.sub(lambda m: _repeating_value(m.group(1), m.group(2), m.group(3) or m.group(4)), s)
        s = _ELLIPSIS.sub(_ellipsis, s)
    s = re.sub(r"\s+", " ", s).strip()
    return strip_wrappers(s)


@dataclass(frozen=True)
class Number:
    """A plain number: exact value, whether it carried a % sign, decimal places written (None if not a
    decimal; for the rounding rule), and its known unit (None if none or only a label such as "apples")."""

    value: Fraction
    percent: bool = False
    places: int | None = None
    unit: Unit | None = None


def plain_number(s: str) -> Number | None:
    """Fast path: the answer as an exact number if it is one in plain form, else None. Never uses sympy."""
    s = clean(s)
    if s.startswith("\\text"):
        s = strip_text_commands(s)  # \text{two}
    s, unit, word_percent = split_units(s)
    percent = s.endswith("%") or word_percent
    if s.endswith("%"):
        s = s[:-1].strip()
    s = s.replace(" ", "")
    if s.lower() in NUMBER_WORDS:
        return Number(Fraction(NUMBER_WORDS[s.lower()]), percent, None, unit)
    m = _SCALE_WORD.match(s)
    if m:  # 2.5 million
        inner = plain_number(m.group(1))
        return inner and Number(inner.value * _SCALES[m.group(2).lower()], percent, None, unit)
    if s.startswith("(") and s.endswith(")") and "," not in s:
        s = s[1:-1]
    if s.startswith("+"):
        s = s[1:]
    if _DECIMAL.match(s):
        if _decimal_too_big(s):
            return None  # Fraction("1e9999999") alone takes seconds: such numbers are not GSM8K/MATH answers
        mantissa, sci, _ = s.lower().partition("e")
        places = len(mantissa.split(".")[1]) if "." in mantissa and not sci else None
        return Number(Fraction(s), percent, places, unit)
    m = _SCI_LATEX.match(s) or _POWER_OF_TEN.match(s)
    if m:
        exp = int(m.group(2))
        mantissa = m.group(1) + "1" if m.re is _POWER_OF_TEN else m.group(1)
        if abs(exp) > MAX_EXPONENT or len(mantissa) > MAX_DIGITS:
            return None
        return Number(Fraction(mantissa) * Fraction(10) ** exp, percent, None, unit)
    m = _SIMPLE_FRAC.match(s)
    if m:
        sign = -1 if m.group(1) == "-" else 1
        num, den = next((m.group(i), m.group(i + 1)) for i in (2, 4, 6) if m.group(i) is not None)
        if max(len(num), len(den)) > MAX_DIGITS or int(den) == 0:
            return None
        return Number(sign * Fraction(int(num), int(den)), percent, None, unit)
    m = _MIXED.match(s)
    if m and max(len(g or "") for g in m.groups()[1:]) <= MAX_DIGITS:
        num, den = (m.group(3), m.group(4)) if m.group(3) is not None else (m.group(5), m.group(6))
        if int(den) != 0:
            sign = -1 if m.group(1) == "-" else 1
            return Number(sign * (int(m.group(2)) + Fraction(int(num), int(den))), percent, None, unit)
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

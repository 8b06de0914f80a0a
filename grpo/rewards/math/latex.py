r"""LaTeX -> text for sympy's `parse_expr` (only rewrites text; sympy parses it later, in the bounded helper).

Read as in print: ``\sin 2x`` is sin(2x), ``\sin x \cos x`` is sin(x)·cos(x), ``\sin^2 x`` is sin(x)², ``\sin^{-1}``
is arcsin, ``\log_2 8`` is log 8 / log 2, ``\ln e^2`` is ln(e²); ``\arctan`` is sympy's ``atan``; ``|x|`` and
``\lfloor x \rfloor`` / ``\lceil x \rceil`` are Abs, floor and ceiling; in an answer with a trig function a
degree sign is π/180 (``\sin 30°`` = 1/2), elsewhere degrees are a unit and were taken off before.
Subscripted names keep their subscript (``x_1`` and ``x_2`` are different symbols) and Greek letters are
symbols of their own (``\theta`` -> ``theta_``), so sympy's splitting of multi-letter names into products
(``ab`` = a·b) never touches them.
"""
from __future__ import annotations

import re

_FUNCS = {"sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc",
          "arcsin": "asin", "arccos": "acos", "arctan": "atan", "arccot": "acot", "arcsec": "asec", "arccsc": "acsc",
          "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "log": "log", "ln": "log", "lg": "log10", "exp": "exp"}
_INVERSE = {"sin": "asin", "cos": "acos", "tan": "atan", "cot": "acot", "sec": "asec", "csc": "acsc"}
_GREEK = frozenset("""alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho
    varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Upsilon Phi Psi
    Omega""".split())
_SYMBOLS = {"pi": " pi ", "infty": " oo ", "infinity": " oo ", "cdot": "*", "times": "*", "div": "/", "ast": "*",
            "le": "<=", "leq": "<=", "ge": ">=", "geq": ">=", "neq": "!=", "ne": "!=", "lt": "<", "gt": ">"}
_BRACKETS = {"lfloor": " floor(", "rfloor": ")", "lceil": " ceiling(", "rceil": ")", "langle": "(", "rangle": ")",
             "lbrace": "(", "rbrace": ")", "lbrack": "(", "rbrack": ")"}
_KEEP_ARGUMENT = frozenset("text mathrm mathit mathbf textbf textit mbox operatorname boldsymbol bm mathbb mathcal "
                           "overline underline hat vec bar widehat tilde".split())
_TRIG = re.compile(r"\\(?:arc)?(?:sin|cos|tan|cot|sec|csc)")
_PLAIN_ARGUMENT = re.compile(r"[0-9.]*[A-Za-z]*")


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


def _closing(s: str, i: int, open_: str = "(", close: str = ")") -> int:
    """Index of the bracket closing the one at s[i]."""
    depth = 0
    for k in range(i, len(s)):
        depth += 1 if s[k] == open_ else -1 if s[k] == close else 0
        if depth == 0:
            return k
    raise ValueError("unbalanced parentheses")


def _function_argument(s: str, i: int) -> tuple[str, int]:
    r"""The argument of a function written without parentheses, as LaTeX: ``(…)``, ``{…}``, a command with its
    arguments (``\frac{a}{b}``, ``\sqrt{x}``, ``\pi``), or a number-and-letters run (``2x``), each with a following
    exponent or degree sign (``x^2``, ``30°``)."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ValueError("function without an argument")
    start = i
    if s[i] == "(":
        i = _closing(s, i) + 1
    elif s[i] == "{":
        _, i = _group(s, i)
    elif s[i] == "\\":
        name, i = _group(s, i)
        if name in ("\\frac", "\\binom"):
            _, i = _group(s, i)
            _, i = _group(s, i)
        elif name == "\\sqrt":
            if i < len(s) and s[i] == "[":
                i = _closing(s, i, "[", "]") + 1
            _, i = _group(s, i)
    else:
        i = _PLAIN_ARGUMENT.match(s, i).end()
        if i == start:
            raise ValueError("function without an argument")
    if i < len(s) and s[i] == "^" and s[start] != "(":
        _, i = _group(s, i + 1)
    if i < len(s) and s[i] == "°":
        i += 1
    return s[start:i], i


def _function(name: str, s: str, i: int, degrees: bool) -> tuple[str, int]:
    """sympy text for the function `name` whose arguments start at s[i] (power, log base, argument)."""
    power = base = None
    while i < len(s):
        while i < len(s) and s[i] == " ":
            i += 1
        if i < len(s) and s[i] == "^" and power is None:
            power, i = _group(s, i + 1)
        elif i < len(s) and s[i] == "_" and name == "log" and base is None:
            base, i = _group(s, i + 1)
        else:
            break
    arg, i = _function_argument(s, i)
    arg = latex_to_sympy_source(arg, degrees)
    fn = _FUNCS[name]
    if power is not None and power.replace(" ", "") == "-1" and name in _INVERSE:
        fn, power = _INVERSE[name], None
    text = f"(log({arg})/log({latex_to_sympy_source(base, degrees)}))" if base is not None else f"{fn}({arg})"
    if power is not None:
        text = f"(({text})**({latex_to_sympy_source(power, degrees)}))"
    return f" {text} ", i


def latex_to_sympy_source(s: str, degrees: bool | None = None) -> str:
    r"""Rewrite a LaTeX expression as text for sympy's `parse_expr`. `degrees`: read ``°`` as π/180 (default:
    when the text has a trig function)."""
    if degrees is None:
        degrees = bool(_TRIG.search(s))
    out: list[str] = []
    open_bars = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+)", s[i:])
            if not m:
                nxt = s[i + 1:i + 2]
                out.append({"{": "(", "}": ")", "|": "|"}.get(nxt, " "))
                i += 2
                continue
            name, i = m.group(1), i + len(m.group(0))
            if name in ("frac", "binom"):
                a, i = _group(s, i)
                b, i = _group(s, i)
                fa, fb = latex_to_sympy_source(a, degrees), latex_to_sympy_source(b, degrees)
                out.append(f" binomial({fa},{fb}) " if name == "binom" else f"(({fa})/({fb}))")
            elif name == "sqrt":
                root = None
                if i < len(s) and s[i] == "[":
                    close = _closing(s, i, "[", "]")
                    root, i = s[i + 1:close], close + 1
                a, i = _group(s, i)
                arg = latex_to_sympy_source(a, degrees)
                out.append(f" sqrt({arg}) " if root is None else
                           f"(({arg})**(1/({latex_to_sympy_source(root, degrees)})))")
            elif name in _FUNCS:
                text, i = _function(name, s, i, degrees)
                out.append(text)
            elif name in _GREEK:
                out.append(f" {name}_ ")
            elif name in _SYMBOLS:
                out.append(_SYMBOLS[name])
            elif name in _BRACKETS:
                out.append(_BRACKETS[name])
            elif name in ("vert", "lvert", "rvert", "mid"):
                s = s[:i] + "|" + s[i:]
            else:
                out.append(" ")  # unknown command (\mathrm, \text ...): drop the command, keep its argument
            continue
        if c == "|":
            before = "".join(out).rstrip()
            closes = open_bars > 0 and before and (before[-1].isalnum() or before[-1] in ")!_")
            out.append(")" if closes else " Abs(")
            open_bars += -1 if closes else 1
        elif c == "°":
            out.append("*pi/180" if degrees else " ")
        elif c == "{":
            out.append("(")
        elif c == "}":
            out.append(")")
        elif c == "^":
            out.append("**")
        elif c == "_":  # a subscript stays part of the name: x_1 and x_2 are different symbols
            a, i = _group(s, i + 1)
            sub = re.sub(r"\W", "", a)
            out.append("_" + sub if sub and out and out[-1][-1:].isalnum() else sub)
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)

r"""Structural and symbolic equivalence of two answer strings (runs sympy; call it through
`grpo.rewards.math.verify`, which bounds it with a timeout).

Structures are recognised on the *gold* answer's shape and the prediction is read the same way:
multiple-choice letter, matrix, set ``\{…\}``, interval/tuple ``(…)``/``[…]`` (bracket kinds must match,
elements in order), union of intervals (order free), bare comma list (order free), equation, text,
expression. Atoms are compared exactly: plain numbers as fractions, everything else with sympy
(``simplify(a - b) == 0``, then a 30-digit numeric check for constants and a random-point check for
expressions with free symbols; a difference clearly nonzero at the first point decides before `simplify`).
"""
from __future__ import annotations

import math
import random
import re
from fractions import Fraction
from functools import lru_cache

from grpo.rewards.math.normalize import (Number, clean, drop_units, latex_to_sympy_source, plain_number,
                                    strip_text_commands)

_CHOICE = re.compile(r"^\(?\s*([A-E])\s*\)?$")
_CHOICE_PRED = re.compile(r"^(?:\\text\{)?\(?\s*([A-Ea-e])\s*(?:\)|\.|:|\}|$)")
_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^}]*\})?(.*?)\\end\{\1\}", re.DOTALL)
_SIMPLE_LHS = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?$")
_CONNECTIVES = re.compile(r"\s*(?:\\text\{\s*(?:or|and)\s*\}|\b(?:or|and)\b)\s*")
_TEXT_UNIT = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}(?:\^\{?\d\}?)?")
_MAX_SET = 12  # bigger sets are compared in order after sorting their text, to keep matching cheap


# ------------------------------------------------------------------------------------ splitting
def split_top(s: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside (), [], {} nesting."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _brackets(s: str) -> tuple[str, str, str] | None:
    """('(', ']', inner) if s is one bracketed group (the outer brackets match each other)."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    depth = 0
    for k, c in enumerate(s):
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        if depth == 0 and k != len(s) - 1:
            return None
    return s[0], s[-1], s[1:-1]


def _set_inner(s: str) -> str | None:
    if s.startswith("\\{") and s.endswith("\\}"):
        return s[2:-2]
    return None


# ------------------------------------------------------------------------------------- atoms
def _sympy_expr(s: str):
    import sympy
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                            standard_transformations)
    src = latex_to_sympy_source(s)
    if "%" in src:
        src = src.replace("%", "/100")
    _screen_source(src)
    # O is a plain letter: as sympy's Order, a sentence such as "Omega overcame ..." turned into O(...) terms whose
    # substitution ran series/limit code (~1.3 s) and raised TypeError on comparison; no answer here is big-O
    names = {"e": sympy.E, "E": sympy.E, "i": sympy.I, "pi": sympy.pi, "oo": sympy.oo, "lamda": sympy.Symbol("lamda"),
             "O": sympy.Symbol("O")}
    tr = standard_transformations + (implicit_multiplication_application, convert_xor)
    return parse_expr(src, local_dict=names, transformations=tr, evaluate=True, global_dict=dict(_parser_globals()))


# parse_expr runs `eval` on the (transformed) answer, so what an answer can reach is what the namespace holds.
# A name missing from it parses as plain symbols (``print(5)`` reads as p*r*I*n*t*5, never a call of Python's
# print). Kept from Python's builtins: only these (max/min are sympy's Max/Min); `__builtins__` is emptied so
# eval cannot fall back to the real ones.
_SAFE_BUILTINS = ("abs", "all", "any", "divmod", "len", "pow", "round", "sorted", "sum")
# Dropped from sympy's namespace: what parses text as code (sympy parses a string with the full builtins;
# `S` and `sympify` stay but refuse text), prints, prompts, plots, starts programs or changes global state, and
# what turns an expression into text, a source of strings (the printers also by `_unsafe_sympy_name`'s rule).
_UNSAFE_SYMPY = frozenset("""
    parse_expr lambdify var capture preview init_printing init_session interactive_traversal
    pprint pprint_try_use_unicode pprint_use_unicode pretty_print pager_print textplot plot plot_implicit
    plot_parametric test doctest seterr register_handler remove_handler public cacheit memoize_property timed
    latex multiline_latex mathml pretty srepr sstr sstrrepr python pycode ccode cxxcode fcode glsl_code jscode
    julia_code maple_code mathematica_code octave_code rcode rust_code smtlib_code dotprint filldedent
    default_sort_key StrPrinter TableForm list2numpy matrix2numpy""".split())


def _unsafe_sympy_name(name: str) -> bool:
    return name in _UNSAFE_SYMPY or name.startswith("print") or name.endswith("_code") or name.startswith("_")


def _screen_source(src: str) -> None:
    """Refuse Python that no answer needs and that could reach past the parser namespace: string literals
    (sympy parses a string with its full default namespace, builtins included), attribute access (``x.y``; a
    decimal point is part of a number token), subscripts (``f(x)[0]``) and argument unpacking (``f(*a)``),
    which could pick text out of what a function returns. Raises ValueError, which the caller treats as
    unparseable text (equal only to identical text)."""
    import io
    import keyword
    import tokenize
    if "'" in src or '"' in src:
        raise ValueError("quotes in an answer")
    prev = None
    for tok in tokenize.generate_tokens(io.StringIO(src.strip()).readline):
        if tok.type == tokenize.OP:
            after_operand = prev is not None and (
                prev.type == tokenize.NUMBER or prev.string in (")", "]", "}")
                or (prev.type == tokenize.NAME and not keyword.iskeyword(prev.string)))
            if tok.string == "." or (tok.string == "[" and after_operand):
                raise ValueError("attribute access or subscript in an answer")
            if tok.string in ("*", "**") and prev is not None and prev.string in ("(", ","):
                raise ValueError("argument unpacking in an answer")
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
            prev = tok


def _sympify_no_text(a, *args, **kwargs):
    """`S` / `sympify` inside an answer: numbers and expressions only; a string would be parsed as code."""
    import sympy
    if isinstance(a, (str, bytes, bytearray)):
        raise TypeError("sympify of text inside an answer")
    return sympy.sympify(a, *args, **kwargs)


@lru_cache(maxsize=1)
def _parser_globals() -> dict:
    """parse_expr's global namespace, built once (without `global_dict` it runs ``from sympy import *`` and
    copies the builtins at every call, ~0.7 ms, half of parsing a short answer). Callers pass a copy, so one
    parse can change no other's namespace. As sympy's default (1.14) less what an answer must not run: see
    `_SAFE_BUILTINS` and `_UNSAFE_SYMPY`."""
    import builtins

    from sympy import Max, Min
    names: dict = {}
    exec("from sympy import *", names)  # sympy's own default namespace (1.14), trimmed below
    for name in [k for k in names if _unsafe_sympy_name(k)]:
        del names[name]
    names.update({k: getattr(builtins, k) for k in _SAFE_BUILTINS})
    names["max"], names["min"] = Max, Min
    names["S"] = names["sympify"] = _sympify_no_text
    names["__builtins__"] = {}
    return names


def _sympy_equal(a, b) -> bool:
    import sympy
    if a == b:
        return True
    if isinstance(a, sympy.Basic) and isinstance(b, sympy.Basic):
        if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
            return bool(a == b)
        diff = a - b
        free = diff.free_symbols
        if not free:
            val = sympy.N(diff, 30)
            scale = max(1, abs(sympy.N(b, 30))) if b.is_number else 1
            return bool(val.is_number and abs(val) < 1e-20 * scale)
        points = _random_points(sorted(free, key=str))
        if _differs_at(a, b, diff, points[0]):
            return False  # what the loop below returns at points[0], once simplify failed to make a - b 0
        if sympy.simplify(diff) == 0:
            return True
        for point in points:
            val = sympy.N(diff.subs(point), 30)
            if not val.is_number or abs(val) > 1e-15:
                return False
        return True
    return False


def _random_points(syms: list) -> list[dict]:
    """The 5 rational points (seeded) at which expressions with free symbols are compared."""
    import sympy
    rng = random.Random(0)
    return [{x: sympy.Rational(rng.randint(1, 97), rng.randint(1, 13)) for x in syms} for _ in range(5)]


def _differs_at(a, b, diff, point) -> bool:
    """Is diff = a - b clearly nonzero at `point` (|diff| > 1e-9 * max(1, |a|, |b|) there, 30 digits)? Then
    a - b is not identically zero, so `simplify` cannot make it 0, and the point loop of `_sympy_equal`
    returns False at this point: the check is False without `simplify`, by far its slowest step (~0.15 s
    for a sentence, which sympy reads as a product of one-letter symbols).

    Only for sums, products and powers of numbers, symbols and function calls (nothing with bound
    variables, where `xreplace` would not substitute as the loop's `subs` does), with numeric exponents up
    to 1000 (a larger one could make exact substitution slower than `simplify`). The point is substituted
    exactly, as in the loop: a removable singularity there gives nan, never a number, and the value
    differs from the loop's only by the rounding of decimals (Floats), far below the margin; the scale
    keeps 30-digit noise of a huge identically-zero difference from counting. `xreplace` replaces all
    symbols in one pass (`subs` rebuilds the expression once per symbol: 5-20 ms for a sentence).
    Anything unclear (a pole, no number, an error) answers False, and the caller takes the full path."""
    import sympy
    from sympy.core.function import Application
    plain = (sympy.Add, sympy.Mul, sympy.Symbol, sympy.Number, sympy.NumberSymbol, sympy.core.numbers.ImaginaryUnit,
             Application)
    try:
        for node in sympy.preorder_traversal(diff):
            if isinstance(node, sympy.Pow):
                if not (node.exp.is_Number and abs(node.exp) <= 1000):
                    return False
            elif not isinstance(node, plain):
                return False
        size = abs(complex(sympy.N(diff.xreplace(point), 30)))
        if not (math.isfinite(size) and size > 1e-9):  # equal there (or nan): the scale cannot help
            return False
        scale = max(1.0, abs(complex(a.evalf(30, subs=point))), abs(complex(b.evalf(30, subs=point))))
    except Exception:  # noqa: BLE001 - cannot tell: take the full path
        return False
    return math.isfinite(scale) and size > 1e-9 * scale


def _drop_text_units(s: str) -> str:
    """'36\\pi \\text{ cm}^2' -> '36\\pi': \\text blocks after an expression are units."""
    s = drop_units(s)
    stripped = _TEXT_UNIT.sub("", s).strip()
    return stripped if stripped else s


def _rounded_match(gold: Number, exact: Fraction) -> bool:
    """A decimal gold with k places accepts an exact prediction that rounds (half away from 0) to it."""
    if gold.places is None or gold.places == 0:
        return False
    q = Fraction(10) ** gold.places
    scaled = abs(exact) * q
    rounded = int(scaled + Fraction(1, 2)) * (1 if exact >= 0 else -1)
    return Fraction(rounded) / q == gold.value


def numbers_equal(gold: Number, pred: Number) -> bool:
    """Exact equality; a % on either side also accepts the value divided by 100 (25% = 25 = 0.25)."""
    candidates = [pred.value]
    if pred.percent != gold.percent:
        candidates += [pred.value / 100] if pred.percent else [pred.value * 100]
    if gold.value in candidates:
        return True
    return pred.places is None and not _terminates(pred.value) and _rounded_match(gold, pred.value)


def _terminates(x: Fraction) -> bool:
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def atoms_equal(gold: str, pred: str) -> bool:
    if gold == pred:
        return True
    g, p = plain_number(gold), plain_number(pred)
    if g is not None and p is not None:
        return numbers_equal(g, p)
    gt, pt = strip_text_commands(gold), strip_text_commands(pred)
    if re.fullmatch(r"[A-Za-z][A-Za-z ]*[A-Za-z]", gt.strip()):  # a word answer ("Monday", "odd")
        return gt.strip().lower() == pt.strip().lower()
    try:
        ge, pe = _sympy_expr(_drop_text_units(gold)), _sympy_expr(_drop_text_units(pred))
    except Exception:  # noqa: BLE001 - unparseable text: only identical text counts
        return clean(gt).replace(" ", "") == clean(pt).replace(" ", "")
    if g is not None and g.places and p is None and pe.is_number:
        try:  # a rounded decimal gold accepts an exact non-terminating prediction (1/3 for 0.33)
            import sympy
            exact = Fraction(str(sympy.Rational(sympy.N(pe, 40)))) if not pe.is_Rational else Fraction(str(pe))
            if pe.is_Rational and _terminates(exact):
                return exact == g.value
            return _rounded_match(g, exact)
        except Exception:  # noqa: BLE001
            return False
    if g is not None and g.percent:
        try:
            return _sympy_equal(ge, pe) or _sympy_equal(ge / 100, pe)
        except Exception:  # noqa: BLE001
            return False
    return _sympy_equal(ge, pe)


# --------------------------------------------------------------------------------- structures
def _unordered(golds: list[str], preds: list[str]) -> bool:
    if len(golds) != len(preds):
        return False
    if len(golds) > _MAX_SET:
        return sorted(golds) == sorted(preds)
    left = list(preds)
    for g in golds:
        hit = next((k for k, p in enumerate(left) if answers_equal(g, p)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def _ordered(golds: list[str], preds: list[str]) -> bool:
    return len(golds) == len(preds) and all(answers_equal(g, p) for g, p in zip(golds, preds))


def _matrix_cells(s: str) -> list[list[str]] | None:
    m = _MATRIX.search(s)
    if not m:
        return None
    rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
    return [[c.strip() for c in r.split("&")] for r in rows]


def _equation_sides(s: str) -> tuple[str, str] | None:
    parts = split_top(s, "=")
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _drop_simple_lhs(s: str) -> str:
    """'x = 5' -> '5' (a lone variable, subscripted variable or f(x) on the left)."""
    sides = _equation_sides(s)
    if sides and _SIMPLE_LHS.match(sides[0].replace(" ", "")):
        return sides[1]
    return s


def normalise(s: str) -> str:
    s = clean(s)
    if s.startswith("\\boxed{") and s.endswith("}"):
        s = s[7:-1]
    s = _CONNECTIVES.sub(", ", s).strip(" ,")
    parts = split_top(s, "\\pm")
    if len(parts) == 2 and "," not in s:  # a \pm b is the two answers a + b, a - b
        s = f"{parts[0]}+{parts[1]}, {parts[0]}-{parts[1]}"
    return s


def answers_equal(gold: str, pred: str) -> bool:
    """Is `pred` the same answer as `gold`? Unbounded (uses sympy); see the module docstring."""
    gold, pred = normalise(gold), normalise(pred)
    if gold == pred:
        return True
    m = _CHOICE.match(strip_text_commands(gold))
    if m:
        pm = _CHOICE_PRED.match(pred)
        return bool(pm) and pm.group(1).upper() == m.group(1)
    gm = _matrix_cells(gold)
    if gm is not None:
        pm_cells = _matrix_cells(pred)
        if pm_cells is None:
            pb = _brackets(pred)  # a column/row vector written as a tuple
            flat = [c for row in gm for c in row]
            return bool(pb) and min(len(gm), len(gm[0])) == 1 and _ordered(flat, split_top(pb[2]))
        return len(gm) == len(pm_cells) and all(_ordered(g, p) for g, p in zip(gm, pm_cells))
    gs, ps = _set_inner(gold), _set_inner(pred)
    if gs is not None:
        items = ps if ps is not None else pred
        return _unordered(split_top(gs), split_top(items))
    if "\\cup" in gold:
        return _unordered(split_top(gold, "\\cup"), split_top(pred, "\\cup"))
    gb, pb = _brackets(gold), _brackets(pred)
    if gb and "," in gb[2] and split_top(gb[2]) != [gb[2]]:
        return bool(pb) and gb[:2] == pb[:2] and _ordered(split_top(gb[2]), split_top(pb[2]))
    golds, preds = split_top(gold), split_top(pred)
    if len(golds) > 1 or len(preds) > 1:
        return _unordered([_drop_simple_lhs(g) for g in golds], [_drop_simple_lhs(p) for p in preds])
    gsides, psides = _equation_sides(gold), _equation_sides(pred)
    if gsides and psides and not _SIMPLE_LHS.match(gsides[0].replace(" ", "")):
        g_expr, p_expr = f"({gsides[0]})-({gsides[1]})", f"({psides[0]})-({psides[1]})"
        return atoms_equal(g_expr, p_expr) or atoms_equal(g_expr, f"-({p_expr})")
    return atoms_equal(_drop_simple_lhs(gold), _drop_simple_lhs(pred))

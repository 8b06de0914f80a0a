r"""Equivalence of two answer strings (runs sympy; call it through `grpo.rewards.math.verify`, which bounds it
with a timeout).

Both answers are normalised (`normalize.clean`) and read into shapes (`structure.read`); then, in order:

- a gold choice letter (``B``, ``(B)``, ``\textbf{(B)}``, ``\textbf{(B) }12``) accepts a prediction that opens
  with that letter (``(b)``, ``B.``, ``\text{B}``) or, where the gold gives one, the choice's value;
- matrices compare cell by cell (a scalar written before a matrix multiplies it); a column or row vector
  matches a tuple of its entries;
- equations: an assignment (``x = 5``, ``5 = x``, ``f(x) = …``, ``(x, y) = (3, -1)``, ``x = 3, y = -1``) matches an
  assignment to the same names with equal values, and a bare value (a tuple: in the written order of the
  gold's names, or alphabetical order of the prediction's); ``x = 5`` and ``y = 5`` are different answers.
  Two equations that are not assignments to the same names are equal when ``lhs - rhs`` of one is a nonzero
  constant times that of the other (``y = 2x + 3``, ``2y = 4x + 6``, ``y - 2x = 3``);
- sets of reals (intervals against inequalities, unions, ``\mathbb{R}``, ``\emptyset``, set-builder): equal
  sets (`sets`), inequalities in the same variable;
- tuples and intervals ``(…)``/``[…]``: brackets must match, elements in order;
- sets ``\{…\}`` and bare lists (roots): order free (a set ignores repeats, a list counts them);
- single answers: `atoms_equal` — plain numbers exactly as fractions with units and percent rules,
  words case-insensitively, everything else with sympy (``simplify(a - b) == 0``, then a 30-digit numeric
  check for constants and a random-point check for expressions with free symbols; a difference clearly
  nonzero at the first point decides before `simplify`).
"""
from __future__ import annotations

import math
import random
import re
from fractions import Fraction

from grpo.rewards.math.normalize import Number, clean, plain_number, split_units, strip_text_commands
from grpo.rewards.math.parse import _parser_globals, _screen_source, sympy_expr  # noqa: F401 - re-exported
from grpo.rewards.math.sets import as_items, is_set_like, real_set, sets_equal
from grpo.rewards.math.structure import (Assignment, Atom, Bracketed, Equation, Listing, Matrix, Member, NamedSet,
                                         Relation, SetBuilder, SetLit, SetOp, read, split_top)  # noqa: F401

_sympy_expr = sympy_expr  # the name the tests and older callers use
_CHOICE_GOLD = re.compile(r"^(?:\(\s*([A-E])\s*\)\s*(.*)|([A-E]))$")
_CHOICE_PRED = re.compile(r"^(?:\(\s*([A-Ea-e])\s*\)|([A-Ea-e])(?:\s*[.:)].*)?$)")
_NOTHING = re.compile(r"^(?:[\s,;.$°]|\bor\b|\band\b)*$", re.IGNORECASE)
_RATIO = re.compile(r"^([^:=<>]+?)\s*:\s*([^:=<>]+)$")
_SHORT_WORDS = frozenset({"yes", "no", "odd", "all", "none", "true", "false", "neither", "both"})
_MAX_SET = 12  # bigger sets/lists are compared after sorting their text, to keep matching cheap


def normalise(s: str) -> str:
    """`clean`, and "" for an answer with nothing in it (only commas, connectives, a currency or degree sign)."""
    s = clean(s)
    return "" if _NOTHING.match(s) else s


# ------------------------------------------------------------------------------------- atoms
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


def _rounded_match(gold: Number, exact: Fraction) -> bool:
    """A decimal gold with k >= 2 places accepts an exact prediction that rounds (half away from 0) to it (one
    place is too coarse a tolerance to read as rounding: gold 0.3 against 2/7)."""
    if gold.places is None or gold.places < 2:
        return False
    q = Fraction(10) ** gold.places
    scaled = abs(exact) * q
    rounded = int(scaled + Fraction(1, 2)) * (1 if exact >= 0 else -1)
    return Fraction(rounded) / q == gold.value


def numbers_equal(gold: Number, pred: Number) -> bool:
    """Exact equality (in the same unit where both carry a known one; different dimensions are never equal);
    a % on either side also accepts the value divided by 100 (25% = 25 = 0.25)."""
    g, p = gold.value, pred.value
    if gold.unit is not None and pred.unit is not None:
        if gold.unit.dims != pred.unit.dims:
            return False
        g, p = g * gold.unit.scale, p * pred.unit.scale
    candidates = [p]
    if pred.percent != gold.percent:
        candidates += [p / 100] if pred.percent else [p * 100]
    if g in candidates:
        return True
    return pred.places is None and not _terminates(pred.value) and _rounded_match(gold, pred.value)


def _terminates(x: Fraction) -> bool:
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _word(s: str) -> str | None:
    """The lower-cased text of a word answer ("Monday", "no solution", "Bob", \\text{even}), else None; short
    letter strings such as ``ab`` or ``xyz`` are products of variables, not words."""
    texty = bool(re.search(r"\\(?:text|textbf|textit|mathrm|mbox)\s*\{", s))
    t = strip_text_commands(s).strip().rstrip(".").strip()
    if not re.fullmatch(r"[A-Za-z][A-Za-z '\-]*", t):
        return None
    if texty or re.search(r"[A-Za-z]{4}", t) or t.lower() in _SHORT_WORDS or re.fullmatch(r"[A-Z][a-z]{2}", t):
        return re.sub(r"\s+", " ", t.lower())
    return None


def _letters(s: str) -> str | None:
    t = strip_text_commands(s).strip().rstrip(".").strip()
    return re.sub(r"\s+", " ", t.lower()) if re.fullmatch(r"[A-Za-z][A-Za-z '\-]*", t) else None


def atoms_equal(gold: str, pred: str) -> bool:
    if gold == pred:
        return True
    g_core, g_unit, _ = split_units(gold)
    p_core, p_unit, _ = split_units(pred)
    if g_unit is not None and p_unit is not None and g_unit.dims != p_unit.dims:
        return False  # 5 cm against 5 m² or 5 s
    g, p = plain_number(gold), plain_number(pred)
    if g is not None and p is not None:
        return numbers_equal(g, p)
    gw, pw = _word(gold), _word(pred)
    if gw is not None or pw is not None:  # a word answer: the other side's letters are a word too (DNE)
        return (gw or _letters(gold)) == (pw or _letters(pred))
    gr, pr = _RATIO.match(g_core), _RATIO.match(p_core)
    if gr or pr:  # a ratio a:b is the number a/b (3:4 = 6:8 = 0.75)
        g_core, p_core = (f"({m.group(1)})/({m.group(2)})" if m else c for m, c in ((gr, g_core), (pr, p_core)))
    try:
        ge, pe = sympy_expr(g_core), sympy_expr(p_core)
    except Exception:  # noqa: BLE001 - unparseable text: only identical text counts
        return clean(strip_text_commands(gold)).replace(" ", "") == clean(strip_text_commands(pred)).replace(" ", "")
    import sympy
    if g_unit is not None and p_unit is not None and g_unit.scale != p_unit.scale:
        ge, pe = ge * sympy.Rational(g_unit.scale), pe * sympy.Rational(p_unit.scale)
    if g is not None and g.places and p is None and getattr(pe, "is_number", False):
        try:  # a rounded decimal gold accepts an exact non-terminating prediction (1/3 for 0.33)
            exact = Fraction(str(sympy.Rational(sympy.N(pe, 40)))) if not pe.is_Rational else Fraction(str(pe))
            if pe.is_Rational and _terminates(exact):
                return exact == g.value
            return _rounded_match(g, exact)
        except Exception:  # noqa: BLE001
            return False
    try:
        if g is not None and g.percent:
            return _sympy_equal(ge, pe) or _sympy_equal(ge / 100, pe)
        return _sympy_equal(ge, pe)
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------------- structures
def _unordered(golds: list, preds: list, as_sets: bool = False) -> bool:
    """Every gold item matched by its own prediction item (a multiset); `as_sets`: repeats do not count."""
    if len(golds) > _MAX_SET or len(preds) > _MAX_SET:
        return sorted(map(repr, golds)) == sorted(map(repr, preds))
    if as_sets:
        return (all(any(_same(g, p) for p in preds) for g in golds)
                and all(any(_same(g, p) for g in golds) for p in preds))
    if len(golds) != len(preds):
        return False
    left = list(preds)
    for g in golds:
        hit = next((k for k, p in enumerate(left) if _same(g, p)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def _ordered(golds: list[str], preds: list[str]) -> bool:
    return len(golds) == len(preds) and all(_same(read(g), read(p)) for g, p in zip(golds, preds))


def _matrix_cells(m: Matrix) -> list[list[str]]:
    if m.scale is None:
        return [list(r) for r in m.rows]
    return [[f"({m.scale})({c})" for c in r] for r in m.rows]


def _matrices(g, p) -> bool:
    if isinstance(g, Matrix) and isinstance(p, Matrix):
        gc, pc = _matrix_cells(g), _matrix_cells(p)
        return len(gc) == len(pc) and all(_ordered(a, b) for a, b in zip(gc, pc))
    m, other = (g, p) if isinstance(g, Matrix) else (p, g)
    if not isinstance(other, Bracketed):
        return False
    cells = _matrix_cells(m)
    if min(len(cells), len(cells[0])) != 1:
        return False
    flat = [c for row in cells for c in row]
    return _ordered(flat, list(other.items)) if m is g else _ordered(list(other.items), flat)


def _name_key(name: str) -> list:
    """Natural order of names: x_2 before x_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _roots_of_one_variable(names: tuple) -> bool:
    """x_1, x_2, ...: numbered roots of one unknown (a list of values, not a point)."""
    bases = {re.sub(r"_\{?\d+\}?$", "", n) for n in names}
    return len(bases) == 1 and all(re.search(r"_\{?\d+\}?$", n) for n in names)


def _equation_expr(e):
    """lhs - rhs of an equation or a one-name assignment, as sympy."""
    if isinstance(e, Assignment):
        return sympy_expr(e.names[0]) - sympy_expr(e.values[0])
    return sympy_expr(e.lhs) - sympy_expr(e.rhs)


def _numerator(e):
    """The numerator of e over a common denominator (an equation cleared of fractions)."""
    import sympy
    return sympy.fraction(sympy.together(e))[0]


def _proportional(ge, pe, positive: bool = False) -> bool:
    """Is ge = c * pe for a constant c != 0 (c > 0 if `positive`)? c is read off at a point where pe != 0."""
    import sympy
    if ge == 0 or pe == 0:
        return ge == pe
    free = sorted(ge.free_symbols | pe.free_symbols, key=str)
    for point in _random_points(free)[:3]:
        num, den = ge.xreplace(point), pe.xreplace(point)
        if den.is_zero is False and num.is_zero is False and den.is_finite and num.is_finite:
            c = sympy.nsimplify(sympy.simplify(num / den))
            if c.free_symbols or (positive and not c.is_positive):
                return False
            return _sympy_equal(ge, c * pe)
    return False


def _equations(g, p) -> bool:
    ga, pa = isinstance(g, Assignment), isinstance(p, Assignment)
    if ga and pa and set(g.names) == set(p.names):
        values = dict(zip(p.names, p.values))
        return all(_same(read(v), read(values[n])) for n, v in zip(g.names, g.values))
    if isinstance(g, (Assignment, Equation)) and isinstance(p, (Assignment, Equation)):
        if (ga and len(g.names) > 1) or (pa and len(p.names) > 1):
            return False  # x = 3, y = -1 against other names
        ge, pe = _equation_expr(g), _equation_expr(p)  # x = (y-3)/2 is y = 2x + 3; x = 5 is not y = 5
        return _proportional(ge, pe) or _proportional(*(_numerator(e) for e in (ge, pe)))  # xy = 1 is y = 1/x
    if ga:  # a gold assignment against a bare answer
        if len(g.names) == 1:
            return _same(read(g.values[0]), p)
        if _roots_of_one_variable(g.names) and isinstance(p, (Listing, SetLit)):
            return _same(Listing(tuple(read(v) for v in g.values), ","), p)
        return isinstance(p, Bracketed) and _ordered(list(g.values), list(p.items))
    if pa:
        if len(p.names) == 1:
            return _same(g, read(p.values[0]))
        if _roots_of_one_variable(p.names) and isinstance(g, (Listing, SetLit)):
            return _same(g, Listing(tuple(read(v) for v in p.values), ","))
        order = sorted(range(len(p.names)), key=lambda k: _name_key(p.names[k]))
        return isinstance(g, Bracketed) and _ordered(list(g.items), [p.values[k] for k in order])
    return False  # a general equation against something that is not one


_SIGN = {"<": (1, True), "<=": (1, False), ">": (-1, True), ">=": (-1, False)}


def _relations(g: Relation, p: Relation) -> bool:
    """Two single relations in several variables: the same strictness and ``rhs - lhs`` (oriented to "> 0")
    a positive multiple of each other (``x + y < 3`` and ``y < 3 - x``); ``!=`` up to any nonzero factor."""
    if len(g.ops) != 1 or len(p.ops) != 1 or (g.ops[0] == "!=") != (p.ops[0] == "!="):
        return False
    ge, pe = sympy_expr(g.sides[1]) - sympy_expr(g.sides[0]), sympy_expr(p.sides[1]) - sympy_expr(p.sides[0])
    if g.ops[0] == "!=":
        return _proportional(ge, pe)
    (gs, gstrict), (ps, pstrict) = _SIGN[g.ops[0]], _SIGN[p.ops[0]]
    return gstrict == pstrict and _proportional(gs * ge, ps * pe, positive=True)


def _sets(g, p) -> bool | None:
    """Set-of-reals comparison, or None when either side is not such a set."""
    try:
        gs, ps = real_set(g), real_set(p)
    except Exception:  # noqa: BLE001 - not a set sympy can build (symbolic endpoints...)
        gs = ps = None
    if gs is None or ps is None:
        if isinstance(g, Relation) and isinstance(p, Relation):
            try:
                return _relations(g, p)
            except Exception:  # noqa: BLE001
                return False
        return None
    if gs[1] is not None and ps[1] is not None and gs[1] != ps[1]:
        return False  # x < 3 and y < 3
    try:
        return bool(sets_equal(gs[0], ps[0]))
    except Exception:  # noqa: BLE001
        return False


def _same(g, p) -> bool:
    """Are the two answer shapes the same answer? (the rules of the module docstring, in order)"""
    if isinstance(g, Member) and not is_set_like(p):
        g = g.of
    if isinstance(p, Member) and not is_set_like(g):
        p = p.of
    if isinstance(g, Matrix) or isinstance(p, Matrix):
        return _matrices(g, p)
    if isinstance(g, (Assignment, Equation)) or isinstance(p, (Assignment, Equation)):
        try:
            return _equations(g, p)
        except Exception:  # noqa: BLE001 - a side sympy cannot read: not the same equation
            return False
    if is_set_like(g) or is_set_like(p) or isinstance(g, Member) or isinstance(p, Member):
        verdict = _sets(g, p)
        if verdict is not None:
            return verdict
        if not isinstance(g, (SetLit, Listing)) or not isinstance(p, (SetLit, Listing)):
            return False
    if isinstance(g, (Listing, SetLit)) or isinstance(p, (Listing, SetLit)):
        return _unordered(as_items(g), as_items(p), as_sets=isinstance(g, SetLit) or isinstance(p, SetLit))
    if isinstance(g, Bracketed) or isinstance(p, Bracketed):
        return (isinstance(g, Bracketed) and isinstance(p, Bracketed) and (g.left, g.right) == (p.left, p.right)
                and _ordered(list(g.items), list(p.items)))
    if isinstance(g, Atom) and isinstance(p, Atom):
        return atoms_equal(g.text, p.text)
    return False


def _choice_equal(letter: str, value: str, pred: str) -> bool:
    m = _CHOICE_PRED.match(strip_text_commands(pred).strip())
    if m:
        return (m.group(1) or m.group(2)).upper() == letter
    return bool(value) and answers_equal(value, pred)


def answers_equal(gold: str, pred: str) -> bool:
    """Is `pred` the same answer as `gold`? Unbounded (uses sympy); see the module docstring."""
    gold, pred = normalise(gold), normalise(pred)
    if gold == pred:
        return True
    m = _CHOICE_GOLD.match(strip_text_commands(gold).strip())
    if m:
        return _choice_equal(m.group(1) or m.group(3), (m.group(2) or "").strip(), pred)
    return _same(read(gold), read(pred))

r"""Answers that are sets of real numbers, as sympy sets: intervals, unions/intersections/differences, named
sets (``\mathbb{R}``, ``\emptyset``), finite sets of numbers, set-builder notation and inequalities in one
variable (runs sympy: called inside the bounded helper).

An inequality is its solution set over the reals (``3 >= x`` and ``x <= 3`` are ``(-\infty, 3]``; ``2x < 6``
is ``(-\infty, 3)``; ``|x| <= 1`` is ``[-1, 1]``), a chain ``a < x <= b`` the intersection of its links,
relations joined by "or" the union and by "and" the intersection (by a comma: the intersection, or the
union when the intersection is empty, as in ``x < -1, x > 2``). `real_set` also returns the variable, so
that two inequalities in different variables (``x < 3``, ``y < 3``) are different answers while an interval
matches an inequality in any one variable.
"""
from __future__ import annotations

from grpo.rewards.math.parse import sympy_expr
from grpo.rewards.math.structure import (Bracketed, Listing, Member, NamedSet, Relation, SetBuilder, SetLit, SetOp,
                                         read)


def is_set_like(node) -> bool:
    """Shapes that are compared as sets of reals when the other side is one too."""
    if isinstance(node, Listing):
        return bool(node.items) and all(isinstance(it, Relation) for it in node.items)
    return isinstance(node, (NamedSet, SetOp, SetBuilder, Relation))


def _named(name: str):
    import sympy
    return {"empty": sympy.S.EmptySet, "reals": sympy.S.Reals, "integers": sympy.S.Integers,
            "naturals": sympy.S.Naturals, "rationals": sympy.S.Rationals, "complexes": sympy.S.Complexes,
            "positive_reals": sympy.Interval.open(0, sympy.oo)}[name]


def _real_number(text: str):
    """A real constant (±oo allowed), or None."""
    import sympy
    value = sympy_expr(text)
    if not isinstance(value, sympy.Expr) or value.free_symbols:
        return None
    if value in (sympy.oo, -sympy.oo):
        return value
    return value if value.is_real else None


def real_set(node) -> tuple | None:
    """(sympy set, variable name or None) for a set-like answer shape, or None when it is not one."""
    import sympy
    if isinstance(node, NamedSet):
        return _named(node.name), None
    if isinstance(node, Member):
        found = real_set(node.of)
        return (found[0], node.var.replace(" ", "")) if found else None
    if isinstance(node, Bracketed):
        if len(node.items) != 2:
            return None
        a, b = (_real_number(t) for t in node.items)
        if a is None or b is None or a.is_finite and b.is_finite and not (a <= b):
            return None  # (2, 1) is a pair, not an empty interval
        return sympy.Interval(a, b, node.left == "(", node.right == ")"), None
    if isinstance(node, SetLit):
        values = [_real_number(t) for t in node.items]
        if any(v is None or not v.is_finite for v in values):
            return None
        return sympy.FiniteSet(*values), None
    if isinstance(node, SetOp):
        parts = [real_set(p) for p in node.parts]
        if any(p is None for p in parts):
            return None
        result = parts[0][0]
        for s, _ in parts[1:]:
            result = result.union(s) if node.op == "cup" else result.intersect(s) if node.op == "cap" else result - s
        return result, _one_variable(parts)
    if isinstance(node, SetBuilder):
        found = real_set(node.condition)
        if found is None:
            return None
        var = node.var.replace(" ", "")
        return (found[0], var) if found[1] in (None, var) else None
    if isinstance(node, Relation):
        return _relation_set(node)
    if isinstance(node, Listing) and is_set_like(node):
        parts = [real_set(it) for it in node.items]
        if any(p is None for p in parts) or len({v for _, v in parts}) != 1:
            return None
        union, inter = sympy.Union(*(s for s, _ in parts)), sympy.Intersection(*(s for s, _ in parts))
        if node.conj == "or":
            return union, parts[0][1]
        if node.conj == "and":
            return inter, parts[0][1]
        return (inter if inter != sympy.S.EmptySet else union), parts[0][1]
    return None


def _one_variable(parts: list) -> str | None:
    names = {v for _, v in parts if v is not None}
    return names.pop() if len(names) == 1 else None


def _relation_set(rel: Relation) -> tuple | None:
    """The solution set of a relation chain in one real variable, or None (no variable, several, unsolvable)."""
    import sympy
    sides = [sympy_expr(s) for s in rel.sides]
    if not all(isinstance(s, sympy.Expr) for s in sides):
        return None
    free = set().union(*(s.free_symbols for s in sides))
    if len(free) != 1:
        return None
    (sym,) = free
    x = sympy.Symbol(sym.name, real=True)
    sides = [s.xreplace({sym: x}) for s in sides]
    result = sympy.S.Reals
    for a, op, b in zip(sides, rel.ops, sides[1:]):
        result = result.intersect(_link(a, op, b, x))
    return result, sym.name


def _link(a, op: str, b, x):
    """The solution set of `a op b` over the reals (x the variable)."""
    import sympy
    if op == "!=":
        return sympy.S.Reals - sympy.solveset(sympy.Eq(a, b), x, sympy.S.Reals)
    if a != x and b == x:  # c op x -> x op' c
        a, b, op = b, a, {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
    if a == x and not b.free_symbols:
        if op in ("<", "<="):
            return sympy.Interval(-sympy.oo, b, True, op == "<")
        return sympy.Interval(b, sympy.oo, op == ">", True)
    relation = {"<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt, ">=": sympy.Ge}[op](a, b)
    return sympy.solve_univariate_inequality(relation, x, relational=False)


def sets_equal(a, b) -> bool:
    import sympy
    if a == b:
        return True
    return sympy.Complement(a, b) == sympy.S.EmptySet and sympy.Complement(b, a) == sympy.S.EmptySet


def as_items(node) -> list:
    """The members of a set or list shape, as shapes (a lone answer is a one-item list)."""
    if isinstance(node, SetLit):
        return [read(t) for t in node.items]
    if isinstance(node, Listing):
        return list(node.items)
    return [node]

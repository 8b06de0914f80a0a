r"""The shape of a normalised answer, read from its text (no sympy): what kind of mathematical object it
writes, so that `grpo.rewards.math.equivalence` compares like with like.

Shapes, tried in this order on each top-level piece:

- `Listing`: items separated by top-level commas or "or"/"and" (``1, 2``, ``x = 1 \text{ or } x = 2``);
  ``a \pm b`` anywhere in an item is the two items ``a + b``, ``a - b``. A listing of assignments to
  different names (``x = 3, y = -1``) is one `Assignment` of all of them; to one name (``x = 1, x = 2``,
  ``x = 1, 2``) a listing of the values.
- `NamedSet`: ``\emptyset``/``\varnothing``/``\{\}``, ``\mathbb{R}`` (or "all real numbers"), ``\mathbb{Z}``,
  ``\mathbb{N}``, ``\mathbb{Q}``, ``\mathbb{C}``.
- `SetOp`: ``A \cup B``, ``A \cap B``, ``A \setminus B``.
- `Member`: ``x \in S`` (the set S, for the variable x).
- `SetLit`: ``\{a, b\}``; `SetBuilder`: ``\{x \mid x > 2\}`` (also ``|`` and ``:``).
- `Matrix`: ``\begin{pmatrix}…\end{pmatrix}`` (any matrix environment, ``array``), with a scalar written
  before it.
- `Relation`: a chain of ``<``, ``<=``, ``>``, ``>=``, ``!=`` (``-2 < x <= 3``).
- `Equation`, and its special case `Assignment`: a lone name on one side (``x = 5``, ``5 = x``, ``f(x) = …``,
  ``a_n = …``), or a tuple of names (``(x, y) = (3, -1)``).
- `Bracketed`: ``(a, b)``, ``[a, b)``, ``\langle a, b \rangle``, ``]a, b[``: a tuple or an interval, read
  by the comparison.
- `Atom`: anything else (a number, an expression, a word).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_CONNECTIVE = re.compile(r"\s*(?:\\text\{\s*(or|and)\s*\}|(or|and)\b)\s*", re.IGNORECASE)
_NAME = r"(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?'*"
# a variable, a function of variables, a segment (AB), or a named quantity (\text{slope}, area)
_LONE_NAME = re.compile(rf"^(?:{_NAME}|{_NAME}(?:\^\{{-1\}}|\^-1)?\(\s*[A-Za-z](?:\s*,\s*[A-Za-z])*\s*\)|[A-Z]{{2,3}}"
                        r"|\\(?:text|mathrm|textit|operatorname)\{[A-Za-z ]+\}|(?=[A-Za-z]*[aeiou])[A-Za-z]{4,})$")
_NOT_NAMES = frozenset({"\\pi", "e", "i", "\\infty", "\\emptyset", "\\varnothing"})
_MATRIX = re.compile(r"^(.*?)\\begin\{([pbvBV]?matrix|array|smallmatrix)\}(?:\{[^}]*\})?(.*?)\\end\{\2\}\s*$", re.DOTALL)
_PM = re.compile(r"\\pm(?![A-Za-z])")
_MP = re.compile(r"\\mp(?![A-Za-z])")
_RELATION_OPS = ("<=", ">=", "!=", "<", ">")
_NAMED_SETS = [(re.compile(p, re.IGNORECASE), name) for p, name in [
    (r"^(?:\\emptyset|\\varnothing|\\\{\s*\\\}|\{\s*\}|\\o|\\text\{\s*(?:the\s+)?empty\s+set\s*\})$", "empty"),
    (r"^(?:\\mathbb\s*\{?R\}?|\\R|\\text\{\s*all\s+real\s+numbers?\s*\}|all\s+real\s+numbers?"
     r"|\\text\{\s*all\s+reals\s*\}|all\s+reals)$", "reals"),
    (r"^(?:\\mathbb\s*\{?Z\}?|\\Z|\\text\{\s*all\s+integers\s*\}|all\s+integers)$", "integers"),
    (r"^(?:\\mathbb\s*\{?N\}?|\\N)$", "naturals"), (r"^(?:\\mathbb\s*\{?Q\}?|\\Q)$", "rationals"),
    (r"^(?:\\mathbb\s*\{?C\}?|\\C)$", "complexes")]]
_POSITIVE_REALS = re.compile(r"^(?:\\mathbb\s*\{?R\}?|\\R)\s*(?:\^\s*\{?\s*\+\s*\}?|_\s*\{?\s*>\s*0\s*\}?)$")


@dataclass(frozen=True)
class Atom:
    text: str


@dataclass(frozen=True)
class Listing:
    items: tuple
    conj: str  # "," "or" "and" (the first word connective, else ",")


@dataclass(frozen=True)
class NamedSet:
    name: str  # empty, reals, integers, naturals, rationals, complexes, positive_reals


@dataclass(frozen=True)
class SetOp:
    op: str  # cup, cap, minus
    parts: tuple


@dataclass(frozen=True)
class Member:
    var: str
    of: object


@dataclass(frozen=True)
class SetLit:
    items: tuple  # item texts


@dataclass(frozen=True)
class SetBuilder:
    var: str
    condition: object


@dataclass(frozen=True)
class Matrix:
    rows: tuple  # tuple of tuples of cell texts
    scale: str | None


@dataclass(frozen=True)
class Relation:
    sides: tuple  # texts, len(ops) + 1
    ops: tuple    # "<", "<=", ">", ">=", "!=" between consecutive sides


@dataclass(frozen=True)
class Equation:
    lhs: str
    rhs: str


@dataclass(frozen=True)
class Assignment:
    names: tuple   # lone names ("x", "f(x)", "a_n")
    values: tuple  # value texts, one per name


@dataclass(frozen=True)
class Bracketed:
    left: str   # "(" or "["
    right: str  # ")" or "]"
    items: tuple


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


def _split_items(s: str) -> tuple[list[str], str]:
    """Top-level items separated by commas, semicolons or the words or/and (also in \\text{}); the connective."""
    items, conj, depth, start, i = [], ",", 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c in ",;":
            items.append(s[start:i])
            start = i = i + 1
            continue
        elif depth == 0 and (i == 0 or s[i - 1] in " }") and s[i] in "\\oOaA":
            m = _CONNECTIVE.match(s, i)
            if m and (c == "\\" or i > 0):
                items.append(s[start:i])
                if conj == ",":
                    conj = (m.group(1) or m.group(2)).lower()
                start = i = m.end()
                continue
        i += 1
    items.append(s[start:])
    return [t.strip() for t in items if t.strip()], conj


def _outer(s: str) -> tuple[str, str, str] | None:
    """('(', ']', inner) if s is one bracketed group whose outer brackets match each other."""
    if s.startswith("\\langle") and s.endswith("\\rangle"):
        s = "(" + s[len("\\langle"):-len("\\rangle")] + ")"
    elif len(s) >= 2 and s[0] == "]" and s[-1] == "[":  # ]a, b[ : the open interval (a, b)
        s = "(" + s[1:-1] + ")"
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    depth = 0
    for k, c in enumerate(s):
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        if depth == 0 and k != len(s) - 1:
            return None
    return s[0], s[-1], s[1:-1]


def set_inner(s: str) -> str | None:
    r"""The inside of ``\{…\}`` when that is the whole of s."""
    if not (s.startswith("\\{") and s.endswith("\\}")):
        return None
    depth = 0
    for k in range(2, len(s) - 2):
        if s.startswith("\\{", k):
            depth += 1
        elif s.startswith("\\}", k):
            depth -= 1
            if depth < 0:
                return None
    return s[2:-2]


def lone_name(s: str) -> bool:
    """A variable or function name on its own (x, x_1, \\theta, f(x), a_n, AB)."""
    s = s.replace(" ", "")
    return bool(_LONE_NAME.match(s)) and s not in _NOT_NAMES and not s.startswith(("\\frac", "\\sqrt"))


def expand_pm(s: str) -> list[str]:
    r"""``a \pm b`` -> [``a + b``, ``a - b``] (``\mp`` the other way round), for every \pm in s at once; [s] when
    there is none (each result has none left, so `read` cannot expand forever)."""
    if not (_PM.search(s) or _MP.search(s)):
        return [s]
    plus = _MP.sub("-", _PM.sub("+", s))
    minus = _MP.sub("+", _PM.sub("-", s))
    return [plus, minus]


def _relation(s: str) -> Relation | None:
    sides, ops, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c in "<>!":
            op = s[i:i + 2] if s[i:i + 2] in _RELATION_OPS else c if c in "<>" else None
            if op:
                sides.append(s[start:i].strip())
                ops.append(op)
                i = start = i + len(op)
                continue
        i += 1
    sides.append(s[start:].strip())
    if not ops or not all(sides):
        return None
    return Relation(tuple(sides), tuple(ops))


def _equation(s: str):
    parts = split_top(s, "=")
    if len(parts) != 2 or not all(parts):
        return None
    lhs, rhs = parts
    if lone_name(rhs) and not lone_name(lhs):
        lhs, rhs = rhs, lhs  # 5 = x
    if lone_name(lhs):
        return Assignment((lhs.replace(" ", ""),), (rhs,))
    lb, rb = _outer(lhs), _outer(rhs)
    if lb and rb and lb[0] == "(":
        names, values = split_top(lb[2]), split_top(rb[2])
        if len(names) == len(values) > 1 and all(lone_name(n) for n in names):
            return Assignment(tuple(n.replace(" ", "") for n in names), tuple(values))
    return Equation(lhs, rhs)


def _merge(items: list) -> object:
    """A listing whose items are assignments: to distinct names, one Assignment; to one name, its values."""
    assigns = [it for it in items if isinstance(it, Assignment)]
    if not assigns:
        return None
    names = [n for a in assigns for n in a.names]
    if len(assigns) == len(items) and len(set(names)) == len(names):
        return Assignment(tuple(names), tuple(v for a in assigns for v in a.values))
    if len(set(names)) == 1 and isinstance(items[0], Assignment):  # x = 1, x = 2 / x = 1, 2
        return [read(a.values[0]) if isinstance(a, Assignment) else a for a in items]
    return None


def read(s: str) -> object:
    """The shape of one normalised answer (see the module docstring)."""
    s = s.strip()
    texts, conj = _split_items(s)
    texts = [t for text in texts for t in expand_pm(text)]
    if len(texts) > 1:
        items = [read(t) for t in texts]
        merged = _merge(items)
        if isinstance(merged, Assignment):
            return merged
        return Listing(tuple(merged if merged is not None else items), conj)
    if texts and texts[0] != s:
        return read(texts[0])
    return _read_one(s)


def _read_one(s: str) -> object:
    for pattern, name in _NAMED_SETS:
        if pattern.match(s):
            return NamedSet(name)
    if _POSITIVE_REALS.match(s):
        return NamedSet("positive_reals")
    for sep, op in (("\\cup", "cup"), ("\\cap", "cap"), ("\\setminus", "minus"), ("\\backslash", "minus")):
        parts = split_top(s, sep)
        if len(parts) > 1 and all(parts):
            return SetOp(op, tuple(read(p) for p in parts))
    m = re.match(rf"^({_NAME})\s*\\in(?![A-Za-z])\s*(.+)$", s)
    if m:
        return Member(m.group(1), read(m.group(2)))
    inner = set_inner(s)
    if inner is not None:
        for sep in ("\\mid", "|", ":"):
            parts = split_top(inner, sep)
            if len(parts) == 2 and parts[0] and parts[1]:
                var = re.sub(r"\\in.*$", "", parts[0]).strip()
                return SetBuilder(var, read(parts[1]))
        return SetLit(tuple(t for t in split_top(inner) if t))
    b = _outer(s)
    m = _MATRIX.match(b[2].strip() if b and "\\begin{" in b[2] else s)  # \left[\begin{array}…\end{array}\right]
    if m:
        rows = [r for r in re.split(r"\\\\", m.group(3)) if r.strip()]
        scale = m.group(1).strip() or None
        return Matrix(tuple(tuple(c.strip() for c in r.split("&")) for r in rows), scale)
    rel = _relation(s)
    if rel is not None:
        return rel
    eq = _equation(s)
    if eq is not None:
        return eq
    b = _outer(s)
    if b is not None:
        items = split_top(b[2])
        if len(items) > 1:
            return Bracketed(b[0], b[1], tuple(items))
    return Atom(s)

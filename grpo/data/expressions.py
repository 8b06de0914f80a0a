"""Safe arithmetic expressions: parse with `ast` (no eval), exact evaluation, minimal-parenthesis printing,
and step-by-step reduction.

Used by the countdown generator and checker (`grpo.data.countdown`) and by the arithmetic cold-start traces
(`grpo.data.cold_start`). Only integer literals, + - * / and parentheses are accepted (unary minus on
request); values are exact `Fraction`s, so `7 / 2 * 2` is 7, never 7.000000001.
"""
from __future__ import annotations

import ast
from fractions import Fraction

OPS: dict[type, str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
MAX_LENGTH = 500  # longer strings are rejected before parsing (a reward sees arbitrary model text)


class ExpressionError(ValueError):
    """Not an arithmetic expression of the accepted form."""


def parse(expression: str, allow_unary_minus: bool = False) -> ast.expr:
    """The validated `ast` tree of an expression made of integer literals, + - * / and parentheses."""
    if not isinstance(expression, str) or len(expression) > MAX_LENGTH:
        raise ExpressionError(f"expression must be a string of at most {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as e:
        raise ExpressionError(f"not an expression: {expression!r}") from e
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            continue
        if isinstance(node, tuple(OPS)):
            continue
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            continue
        if allow_unary_minus and (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) or
                                  isinstance(node, ast.USub)):
            continue
        raise ExpressionError(f"{type(node).__name__} is not allowed in {expression!r}")
    return tree


def evaluate(node: ast.expr) -> Fraction:
    """Exact value of a parsed expression; ZeroDivisionError on division by zero."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        return -evaluate(node.operand)
    left, right = evaluate(node.left), evaluate(node.right)
    op = OPS[type(node.op)]
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    return left / right


def literals(node: ast.expr) -> list[int]:
    """The integer literals of an expression, left to right."""
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, ast.UnaryOp):
        return literals(node.operand)
    return literals(node.left) + literals(node.right)


def format_number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def to_text(node: ast.expr) -> str:
    """Infix text with only the parentheses precedence needs: `(3 + 4) * 5`, `3 + 4 * 5`, `8 - (2 + 1)`."""
    if isinstance(node, ast.Constant):
        return format_number(node.value) if isinstance(node.value, Fraction) else str(node.value)
    if isinstance(node, ast.UnaryOp):
        inner = to_text(node.operand)
        return f"-{inner}" if _is_atom(node.operand) else f"-({inner})"
    op = OPS[type(node.op)]
    left, right = to_text(node.left), to_text(node.right)
    if _prec(node.left) < _PREC[op]:
        left = f"({left})"
    # a - (b + c), a / (b * c): the right operand of - and / needs parentheses at equal precedence too
    if _prec(node.right) < _PREC[op] or (_prec(node.right) == _PREC[op] and op in "-/"):
        right = f"({right})"
    return f"{left} {op} {right}"


def _is_atom(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and (not isinstance(node.value, Fraction) or node.value.denominator == 1)


def _prec(node: ast.expr) -> int:
    if isinstance(node, ast.BinOp):
        return _PREC[OPS[type(node.op)]]
    if isinstance(node, ast.Constant) and (isinstance(node.value, Fraction) and node.value.denominator != 1
                                           or node.value < 0):
        return 0  # a fraction 7/2 or a negative number is parenthesised as an operand
    if isinstance(node, ast.UnaryOp):
        return 0
    return 3


def binop(op: str, left: ast.expr, right: ast.expr) -> ast.BinOp:
    op_type = next(t for t, s in OPS.items() if s == op)
    return ast.BinOp(left=left, op=op_type(), right=right)


def number(value: int | Fraction) -> ast.Constant:
    return ast.Constant(value=value)


def reduction_steps(expression: str) -> list[tuple[str, str, str]]:
    """Evaluate step by step, respecting precedence and parentheses, left to right
    (ZeroDivisionError on division by zero).

    Each step reduces the leftmost operation whose operands are both numbers and returns
    (operation, value, expression after the step): "3 + 4 * 5" ->
    [("4 * 5", "20", "3 + 20"), ("3 + 20", "23", "23")].
    """
    node = parse(expression, allow_unary_minus=True)
    node = _fold_unary(node)
    steps = []
    while not isinstance(node, ast.Constant):
        node, op_text, value = _reduce_leftmost(node)
        steps.append((op_text, format_number(value), to_text(node)))
    return steps


def _fold_unary(node: ast.expr) -> ast.expr:
    """-5 literal -> Constant(-5) so that a negative number is a number, not an operation."""
    if isinstance(node, ast.UnaryOp):
        inner = _fold_unary(node.operand)
        if isinstance(inner, ast.Constant):
            return number(-Fraction(inner.value))
        return ast.UnaryOp(op=ast.USub(), operand=inner)
    if isinstance(node, ast.BinOp):
        return ast.BinOp(left=_fold_unary(node.left), op=node.op, right=_fold_unary(node.right))
    return node


def _reduce_leftmost(node: ast.expr) -> tuple[ast.expr, str, Fraction]:
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.operand, ast.Constant):
            value = -Fraction(node.operand.value)
            return number(value), to_text(node), value
        inner, text, value = _reduce_leftmost(node.operand)
        return _fold_unary(ast.UnaryOp(op=ast.USub(), operand=inner)), text, value
    if not isinstance(node.left, ast.Constant):
        left, text, value = _reduce_leftmost(node.left)
        return ast.BinOp(left=left, op=node.op, right=node.right), text, value
    if not isinstance(node.right, ast.Constant):
        right, text, value = _reduce_leftmost(node.right)
        return ast.BinOp(left=node.left, op=node.op, right=right), text, value
    value = evaluate(ast.BinOp(left=number(Fraction(node.left.value)), op=node.op,
                               right=number(Fraction(node.right.value))))
    return number(value), to_text(node), value

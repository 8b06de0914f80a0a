r"""An answer's text -> a sympy expression, without letting the answer run code (runs inside the bounded helper).

sympy's `parse_expr` `eval`s the transformed text, so what an answer can reach is what the namespace holds:
Python's I/O, exec/eval, import and sympy's printers and code generators are not in it (``print(5)`` reads
as a product of symbols), and `_screen_source` refuses string literals, attribute access, subscripts and
``*args`` before parsing. Decimals are read as exact rationals (``0.1`` is 1/10, so ``x > -0.5`` and
``x > -\frac12`` are the same inequality).
"""
from __future__ import annotations

from functools import lru_cache

from grpo.rewards.math.latex import latex_to_sympy_source

# Kept from Python's builtins: only these (max/min are sympy's Max/Min); `__builtins__` is emptied so eval cannot
# fall back to the real ones.
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


def sympy_expr(s: str):
    """The sympy expression of one LaTeX/plain answer (no relations, lists or sets: see `structure`)."""
    import sympy
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                            rationalize, standard_transformations)
    src = latex_to_sympy_source(s)
    if "%" in src:
        src = src.replace("%", "/100")
    _screen_source(src)
    # O is a plain letter: as sympy's Order, a sentence such as "Omega overcame ..." turned into O(...) terms whose
    # substitution ran series/limit code (~1.3 s) and raised TypeError on comparison; no answer here is big-O
    names = {"e": sympy.E, "E": sympy.E, "i": sympy.I, "pi": sympy.pi, "oo": sympy.oo, "lamda": sympy.Symbol("lamda"),
             "O": sympy.Symbol("O")}
    tr = standard_transformations + (implicit_multiplication_application, convert_xor, rationalize)
    return parse_expr(src, local_dict=names, transformations=tr, evaluate=True, global_dict=dict(_parser_globals()))

r"""Units after a number (``5 cm``, ``12\text{ apples}``, ``20\text{ m}^2``, ``60 miles per hour``, ``\$5``)
and where they stop: which trailing letters are a unit or a label and which are mathematics (``3ab``,
``6 ab^2``, ``2xy``). No sympy.

A trailing word is taken off an answer when it is

- a known unit (``cm``, ``km``, ``ft``, ``hours``, ``kg``, ``mph``, ``dollars``, ``°`` ...), written right
  after the number (``5cm``) or after a space; a one-letter unit (``m``, ``s``, ``g``, ``L``, ``h``) only after
  a space or inside ``\text{}``, since ``5m`` is the monomial 5·m;
- a label: a word of four or more letters with a vowel, or a common three-letter noun (``men``, ``egg``,
  ``box`` ...), after a space (``12 apples``, ``5 students``, ``3 men``), or anything inside
  ``\text{}``/``\mbox{}``/``\mathrm{}``.

Anything else stays: ``3ab``, ``6 ab^2``, ``2 xy``, ``8 st`` and ``4 abc`` are products of variables, not a number
with a unit (a unit rule that took any two letters made ``verify("2", "2xy")`` true).

Known units carry a dimension and a scale, so ``5 cm`` vs ``5 m`` and ``3 hours`` vs ``3 minutes`` are
different answers while ``5 cm`` vs ``5 centimeters`` (and ``3 hours`` vs ``180 minutes``) are the same.
Labels carry nothing: ``12 apples`` is 12 whatever the other side says.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_UNIT_ANSWER_CHARS = 200  # longer inputs are not "number + unit" answers (and bound the scan)

# dimension exponents: length, mass, time, angle (degrees), money, calendar (months)
_L, _M, _T, _A, _D, _C = (tuple(int(i == k) for i in range(6)) for k in range(6))


def _u(dim, scale) -> tuple:
    return dim, Fraction(scale)


_KNOWN: dict[str, tuple] = {}
for _names, _dim, _scale in [
    ("m meter meters metre metres", _L, 1), ("cm centimeter centimeters centimetre centimetres", _L, "1/100"),
    ("mm millimeter millimeters millimetre millimetres", _L, "1/1000"), ("km kilometer kilometers kilometre kilometres", _L, 1000),
    ("in inch inches", _L, "0.0254"), ("ft foot feet", _L, "0.3048"), ("yd yard yards", _L, "0.9144"),
    ("mi mile miles", _L, "1609.344"),
    ("g gram grams", _M, "1/1000"), ("kg kilogram kilograms kilo kilos", _M, 1), ("mg milligram milligrams", _M, "1e-6"),
    ("lb lbs pound pounds", _M, "0.45359237"), ("oz ounce ounces", _M, "0.028349523125"),
    ("s sec secs second seconds", _T, 1), ("min mins minute minutes", _T, 60), ("h hr hrs hour hours", _T, 3600),
    ("day days", _T, 86400), ("week weeks", _T, 604800), ("month months", _C, 1), ("yr yrs year years", _C, 12),
    ("° deg degree degrees", _A, 1),
    ("dollar dollars usd $", _D, 1), ("cent cents ¢", _D, "1/100"),
]:
    for _n in _names.split():
        _KNOWN[_n] = _u(_dim, _scale)
_VOLUME = {"l": "1/1000", "liter": "1/1000", "liters": "1/1000", "litre": "1/1000", "litres": "1/1000",
           "ml": "1e-6", "milliliter": "1e-6", "milliliters": "1e-6", "gal": "0.003785411784",
           "gallon": "0.003785411784", "gallons": "0.003785411784"}
for _n, _scale in _VOLUME.items():
    _KNOWN[_n] = ((3, 0, 0, 0, 0, 0), Fraction(_scale))
_OTHER_CURRENCY = ("€", "£", "¥")
_SPEED = {"mph": ("mi", "h"), "kph": ("km", "h"), "kmh": ("km", "h")}
_ONE_LETTER = {"m", "s", "g", "l", "h"}  # units only after a space or inside \text{}
_CASE_SENSITIVE = {"L": "l", "mL": "ml"}
_POWER_WORDS = {"square": 2, "sq": 2, "cubic": 3}
_DIVIDE = {"per", "/"}
_LABEL_ONLY = {"unit", "units"}  # "7 square units": a count of unit squares, not a dimension to compare
# words that are mathematics or connectives, never a label or unit: they keep an answer as it is
_MATH_WORDS = frozenset("""sin cos tan cot sec csc sinh cosh tanh arcsin arccos arctan log ln exp sqrt frac pi infty
    alpha beta gamma delta epsilon theta lambda mu sigma omega phi tau rho eta zeta kappa nu xi psi chi
    mod max min gcd lcm det and or not cup cap le ge leq geq neq times cdot div pm mp mid""".split())
_THREE_LETTER_NOUNS = frozenset("""men boy boys kid kids cat cow dog egg pen box car bus cup hat jar pie pig hen fox bee
    ant bag bat bed cap can fan jet key map mug net pan pot rat toy van way ton tons pts""".split())
_NUMBER_WORDS = frozenset("""zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred
    thousand million billion trillion""".split())

# one trailing token: a \text-like block (content group 1), a word, a degree sign or a slash; an exponent may follow
# (the lookbehind keeps a scan linear in the answer's length, and keeps `\pi` a command, not the word "pi")
_TAIL_TOKEN = re.compile(r"(?:\\(?:text|mbox|mathrm|textrm|rm|textnormal)\s*\{([^{}]*)\}"
                         r"|(?<![A-Za-z\\])([A-Za-z]+(?:/[A-Za-z]+)?|°|¢))"
                         r"(\^\s*\{?\s*[23]\s*\}?)?\s*\.?\s*$")
_ENDS_IN_OPERATOR = re.compile(r"(?:[-+*/^_=<>,(]|\\(?:cdot|times|div|pm|mp|le|ge|leq|geq|neq|ne|in|cup|cap|setminus|to"
                               r"|quad|qquad|text|mathrm|mbox))\s*$")
_MATHY_CORE = re.compile(r"\d|\\(?:pi|sqrt|frac|infty)|[)}|!]")
_TRIG = re.compile(r"\\(?:arc)?(?:sin|cos|tan|cot|sec|csc)")


@dataclass(frozen=True)
class Unit:
    """A known unit: dimension exponents (length, mass, time, angle, money, calendar) and the scale to
    the base unit (m, kg, s, degree, dollar, month)."""

    dims: tuple
    scale: Fraction


def _label_word(w: str) -> bool:
    """A word that names what is counted: four or more letters with a vowel ("apples"), or a common
    three-letter noun. Other three-letter runs (``abc``, ``xyz``) are read as products of variables."""
    low = w.lower()
    return (len(w) >= 4 and re.search(r"[aeiouy]", w, re.IGNORECASE) is not None) or low in _THREE_LETTER_NOUNS


def _word_kind(w: str, spaced: bool, before_label: bool = False) -> str | None:
    """'unit', 'label', 'power', 'per' or None (mathematics) for one trailing word; `before_label`: a label word
    follows it, so a three-letter word with a vowel is an adjective ("5 red apples"), not a product."""
    low = _CASE_SENSITIVE.get(w, w.lower())
    if low in _DIVIDE:
        return "per"
    if low in _POWER_WORDS:
        return "power"
    if low in _MATH_WORDS or low in _NUMBER_WORDS:
        return None
    if low in _KNOWN or low in _SPEED:
        if not spaced and (low in _ONE_LETTER or low == "in"):
            return None  # 5m and 2in are products; 5 m and 2 in are lengths
        return "unit"
    if low in _LABEL_ONLY or low in ("percent",):
        return "label"
    if spaced and (_label_word(w) or before_label and len(w) == 3 and re.search(r"[aeiouy]", w, re.IGNORECASE)):
        return "label"
    return None


def _text_words(content: str) -> list[str] | None:
    r"""The words of a \text{} unit block; None if it holds mathematics (digits, operators)."""
    content = content.replace("\\%", "%").strip()
    if not content or re.search(r"[0-9=<>+*]", content):
        return None
    return re.findall(r"[A-Za-z]+|°|%|\$|/", content)


def split_units(s: str) -> tuple[str, Unit | None, bool]:
    r"""(core, unit, percent): the answer without its trailing unit/label words and a leading currency sign,
    the known unit if there is one (None for labels only or no unit), and whether the word "percent" (or a
    \text{\%}) was among them. ``split_units("5\text{ cm}^2")`` is ``("5", Unit(length², 1/10000), False)``;
    an answer that is not "mathematics + units" comes back unchanged (``"3ab"``, ``"no solution"``)."""
    s = s.strip()
    if len(s) > MAX_UNIT_ANSWER_CHARS:
        return s, None, False
    core, currency = s, False
    if core[:1] == "$" or core[-1:] == "$":
        core, currency = core.strip("$").strip(), True
    elif core[:1] in _OTHER_CURRENCY or core[-1:] in _OTHER_CURRENCY:  # €20: a label (no rate to compare with)
        core = core.strip("".join(_OTHER_CURRENCY)).strip()
        return (core, None, False) if _MATHY_CORE.search(core) else (s, None, False)
    tokens: list[tuple[str, int]] = []  # (word, power), in reading order
    percent = stripped = seen_label = False
    while core:
        m = _TAIL_TOKEN.search(core)
        if not m:
            break
        before = core[:m.start()]
        power = 2 if m.group(3) and "2" in m.group(3) else 3 if m.group(3) else 1
        if m.group(1) is not None:  # a \text{...} block: all its words are units or labels
            words = _text_words(m.group(1))
            if words is None:
                break
            percent = percent or "%" in words
            words = [w for w in words if w != "%"]
        else:
            word = m.group(2)
            spaced = before.endswith(" ")
            parts = word.split("/")
            if len(parts) == 2:
                if not all(_word_kind(w, True) == "unit" for w in parts):
                    break
                words = [parts[0], "/", parts[1]]
            elif _word_kind(word, spaced, seen_label) is None or (word == "°" and _TRIG.search(before)):
                break  # mathematics (3ab, 6 ab^2), or the degrees of a trig argument (\sin 30°)
            else:
                words = [word]
        if not before.strip() or _ENDS_IN_OPERATOR.search(before):
            break  # nothing left, or the core would end in an operator: these letters are the answer itself
        percent = percent or any(w.lower() == "percent" for w in words)
        seen_label = seen_label or any(_word_kind(w, True, True) == "label" for w in words)
        tokens = [(w, power if k == len(words) - 1 else 1) for k, w in enumerate(words)] + tokens
        core, stripped = before.rstrip(), True
    if not (stripped or currency) or not (_MATHY_CORE.search(core) or core.lower() in _NUMBER_WORDS):
        return s, None, False
    unit = _combine(tokens)
    if unit is None and currency:
        unit = Unit(*_KNOWN["$"])
    return core, unit, percent


def _combine(tokens: list[tuple[str, int]]) -> Unit | None:
    """The product of the known units among `tokens` ("square", "cubic", "per"/"/" applied); None when there
    are none (labels only)."""
    dims, scale, known = [0] * 6, Fraction(1), False
    sign, pending_power = 1, 1
    for w, power in tokens:
        low = _CASE_SENSITIVE.get(w, w.lower())
        if low in _DIVIDE:
            sign = -1
            continue
        if low in _POWER_WORDS:
            pending_power = _POWER_WORDS[low]
            continue
        parts = _SPEED.get(low)
        entries = [(_KNOWN[parts[0]], 1), (_KNOWN[parts[1]], -1)] if parts else [(_KNOWN[low], 1)] if low in _KNOWN else []
        for (dim, sc), direction in entries:
            p = power * pending_power * sign * direction
            dims = [d + p * e for d, e in zip(dims, dim)]
            scale *= sc ** p
            known = True
        pending_power = 1
    return Unit(tuple(dims), scale) if known else None


def drop_units(s: str) -> str:
    """'5 cm' -> '5', '12\\text{ apples}' -> '12'; unchanged if what follows the number is mathematics."""
    core, _, _ = split_units(s)
    return core

r"""Finding the final answer in a model completion, and the gold answer in a dataset answer.

Priority for a completion (first that matches wins):

1. the last ``<answer>…</answer>`` block (surrounding newlines/whitespace ignored); inside it a
   ``\boxed{}``, a GSM8K ``#### x`` or "the answer is x" is taken if present, otherwise the whole content;
2. the last ``\boxed{…}`` / ``\fbox{…}`` (nested braces; the last *balanced* box wins);
3. the last GSM8K ``#### x`` line;
4. the last "the (final) answer is x" (up to the end of the sentence);
5. with ``fallback="last_number"``, the last number in the text (thousands separators and a simple
   ``a/b`` fraction allowed); with ``fallback=None``, nothing.

A gold answer is used as given, except that a full GSM8K solution (``… #### 42``) gives the text after the
last ``####`` and a full MATH solution (containing ``\boxed``) gives its last box.
"""
from __future__ import annotations

import re

from grpo.data.sources import last_boxed

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_GSM8K = re.compile(r"####\s*([^\n]+)")
# "(the) (final) answer is x". The optional words only widen a match to the left and never change x or where
# the match ends, so the pattern leaves them out: findall returns the same list, ~10x faster (a start at
# every character had to try "the" and "final" first)
_ANSWER_IS = re.compile(r"answer\s+is\s*[:：]?\s*(.+?)(?:\.(?:\s|$)|\n|$)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_UP_TO_LAST_DIGIT = re.compile(r".*\d", re.DOTALL)
_UP_TO_NOT_IN_NUMBER = re.compile(r".*[^\d\s,./-]", re.DOTALL)  # to the last character no _NUMBER match holds
_COMPLETION_MARKERS = re.compile(r"\\boxed|\\fbox|<answer>|####|answer\s+is", re.IGNORECASE)
MAX_ANSWER_CHARS = 1000  # longer "answers" are not answers: they are compared as-is and never parsed


def _strip_wrappers(s: str) -> str:
    """Remove `$…$`, `\\(…\\)`, `\\[…\\]` and a trailing full stop around an extracted answer."""
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left): len(s) - len(right)].strip()
    return s.rstrip(".").strip()


def last_balanced_boxed(text: str) -> str | None:
    r"""Content of the last balanced `\boxed{}`/`\fbox{}`; an unbalanced trailing one (a truncated
    completion) is skipped in favour of the box before it."""
    end = len(text)
    while end > 0:
        found = last_boxed(text[:end])
        if found is not None:
            return found
        end = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
    return None


def _answer_in_span(span: str) -> str | None:
    boxed = last_balanced_boxed(span)
    if boxed is not None:
        return boxed
    hashes = _GSM8K.findall(span)
    if hashes:
        return hashes[-1]
    said = _ANSWER_IS.findall(span)
    if said:
        return said[-1]
    return None


def last_number(text: str) -> str | None:
    """The last _NUMBER match of `text`. _NUMBER matches hold only digits, whitespace and ``,./-`` and look at
    nothing outside themselves, so the matches of the whole text are those of its stretches between other
    characters: only the stretch with the last digit is matched (a whole 256-token text took ~0.1 ms)."""
    last_digit = _UP_TO_LAST_DIGIT.match(text)
    if last_digit is None:
        return None
    barrier = _UP_TO_NOT_IN_NUMBER.match(text, 0, last_digit.end())
    nums = _NUMBER.findall(text, barrier.end() if barrier else 0)
    return nums[-1].replace(" ", "")


def extract_answer(completion: str, fallback: str | None = "last_number") -> str | None:
    """The model's final answer as a string (see the module docstring for the priority), or None."""
    if fallback not in (None, "last_number"):
        raise ValueError(f"fallback must be 'last_number' or None, got {fallback!r}")
    tags = _ANSWER_TAG.findall(completion)
    if tags:
        inner = tags[-1]
        found = _answer_in_span(inner)
        return _strip_wrappers(found if found is not None else inner)
    found = _answer_in_span(completion)
    if found is not None:
        return _strip_wrappers(found)
    if fallback == "last_number":
        return last_number(completion)
    return None


def prediction_answer(prediction: str) -> str:
    r"""What `verify` compares for a prediction: the final answer inside it when it still reads as a completion
    (a ``\boxed{}``, an ``<answer>`` tag, ``####``, "the answer is"; found as `extract_answer` without the
    last-number fallback), else the prediction itself. An answer that was already extracted stays as it is."""
    if len(prediction) <= 20 * MAX_ANSWER_CHARS and _COMPLETION_MARKERS.search(prediction):
        found = extract_answer(prediction, fallback=None)
        if found is not None:
            return found
    return prediction


def extract_gold(answer: str) -> str:
    """A dataset's gold answer: GSM8K/MATH full solutions reduced to their final answer."""
    if "####" in answer:
        return _strip_wrappers(answer.rsplit("####", 1)[1])
    if "\\boxed" in answer or "\\fbox" in answer:
        boxed = last_balanced_boxed(answer)
        if boxed is not None:
            return _strip_wrappers(boxed)
    return _strip_wrappers(answer)

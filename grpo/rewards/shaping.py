r"""Shaping rewards used with (not instead of) correctness. Each is a plain TRL-style function.

Lengths are in tokens when the trainer passes ``completion_ids``, else in whitespace-separated words
(said in each docstring where it matters).

- `reasoning_steps_reward` (open-r1): min(1, steps / 3), steps = lines that start "Step k", "k." / "k)",
  a bullet, or a sentence opening with First/Second/Next/Then/Finally.
- `cosine_reward` (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning"): correctness
  scaled by a cosine of the length: correct answers go from `max_correct` (length 0) down to
  `min_correct` (length >= max_length); wrong answers from `min_wrong` (length 0) up to `max_wrong`,
  so a short wrong answer is punished hardest. None where correctness is not applicable.
- `repetition_penalty_reward` (Yeo et al. 2025): ``max_penalty * (1 - unique n-grams / n-grams)`` over
  word n-grams (n = 3); 0 for texts shorter than n words.
- `soft_overlong_reward` (DAPO, Yu et al. 2025, eq. 13): 0 up to ``max_length - cache_length``, then
  linear down to -1 at ``max_length``, -1 beyond.
- `language_consistency_reward` (DeepSeek-R1 §2.3.3): the share of the chain of thought (inside
  ``<think>`` if present, else the whole completion) written in the target language's script. Words
  are runs of letters of one script; Han / kana characters count one word each (no spaces in CJK).
  Digits, symbols and LaTeX commands are not words. No words at all: 0.0.
"""
from __future__ import annotations

import math
import re
import unicodedata

from grpo.rewards.registry import as_text

_STEP = re.compile(r"(?m)^\s*(?:step\s*\d+|\d+[.)]\s|[-*•]\s)|(?:^|[.!?]\s+)(?:first|second|third|next|then|finally)\b",
                   re.IGNORECASE)
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
SCRIPTS = {"en": {"LATIN"}, "fr": {"LATIN"}, "de": {"LATIN"}, "es": {"LATIN"}, "zh": {"CJK"},
           "ja": {"CJK", "HIRAGANA", "KATAKANA"}, "ko": {"HANGUL"}, "ru": {"CYRILLIC"}, "ar": {"ARABIC"},
           "el": {"GREEK"}, "hi": {"DEVANAGARI"}, "he": {"HEBREW"}, "th": {"THAI"}}
_PER_CHAR = {"CJK", "HIRAGANA", "KATAKANA"}


def completion_lengths(completions, completion_ids=None) -> list[int]:
    """Tokens per completion if ids are given, else whitespace-separated words."""
    if completion_ids is not None:
        return [len(ids) for ids in completion_ids]
    return [len(as_text(c).split()) for c in completions]


def reasoning_steps_reward(prompts, completions, target_steps: int = 3, **kwargs) -> list[float]:
    return [min(1.0, len(_STEP.findall(as_text(c))) / target_steps) for c in completions]


def cosine_reward(prompts, completions, completion_ids=None, answer=None, task=None, max_length: int = 1000,
                  min_correct: float = 0.5, max_correct: float = 1.0, min_wrong: float = -1.0,
                  max_wrong: float = -0.5, fallback: str | None = "last_number", timeout: float | None = None,
                  **kwargs) -> list[float | None]:
    """`fallback`, `timeout`: the correctness check's (grpo.rewards.math.accuracy_reward); declared here so a
    recipe may set them (recipe kwargs must name declared parameters, grpo.rewards.registry)."""
    from grpo.rewards.math import accuracy_reward
    verifier = {"fallback": fallback, **({"timeout": timeout} if timeout is not None else {})}
    correct = accuracy_reward(prompts, completions, answer=answer, task=task, **verifier, **kwargs)
    out: list[float | None] = []
    for ok, length in zip(correct, completion_lengths(completions, completion_ids)):
        if ok is None:
            out.append(None)
            continue
        start, end = (max_correct, min_correct) if ok == 1.0 else (min_wrong, max_wrong)
        progress = min(length, max_length) / max_length
        out.append(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress)))
    return out


def repetition_penalty_reward(prompts, completions, ngram_size: int = 3, max_penalty: float = -1.0,
                              **kwargs) -> list[float]:
    if max_penalty > 0:
        raise ValueError(f"max_penalty must be <= 0, got {max_penalty}")
    out = []
    for c in completions:
        words = as_text(c).lower().split()
        grams = [tuple(words[i:i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        out.append(0.0 if not grams else max_penalty * (1.0 - len(set(grams)) / len(grams)))
    return out


def soft_overlong_reward(prompts, completions, completion_ids=None, max_length: int = 1024,
                         cache_length: int = 256, **kwargs) -> list[float]:
    if not 0 < cache_length <= max_length:
        raise ValueError(f"need 0 < cache_length <= max_length, got {cache_length}, {max_length}")
    start = max_length - cache_length
    out = []
    for length in completion_lengths(completions, completion_ids):
        if length <= start:
            out.append(0.0)
        elif length <= max_length:
            out.append((start - length) / cache_length)
        else:
            out.append(-1.0)
    return out


def script_of(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else ""


def script_words(text: str) -> list[str]:
    """One script name per word of `text` (runs of letters of one script; CJK: one per character)."""
    text = re.sub(r"\\[A-Za-z]+", " ", text)  # LaTeX commands are not words
    scripts, prev = [], None
    for ch in text:
        if not ch.isalpha():
            prev = None
            continue
        s = script_of(ch)
        if s in _PER_CHAR or s != prev:
            scripts.append(s)
        prev = s
    return scripts


def language_consistency_reward(prompts, completions, language: str | list = "en", **kwargs) -> list[float]:
    n = len(completions)
    langs = language if isinstance(language, (list, tuple)) else [language] * n
    out = []
    for c, lang in zip(completions, langs):
        if lang not in SCRIPTS:
            raise ValueError(f"language {lang!r} not known; known: {sorted(SCRIPTS)}")
        text = as_text(c)
        m = _THINK.search(text)
        words = script_words(m.group(1) if m else text)
        out.append(sum(w in SCRIPTS[lang] for w in words) / len(words) if words else 0.0)
    return out

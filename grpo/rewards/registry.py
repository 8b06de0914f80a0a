"""Reward registry: names -> reward functions, user plug-ins, and the TRL-compatible call convention.

A reward function has TRL's signature::

    fn(prompts, completions, completion_ids=None, **dataset_columns) -> list[float | None]

`completions` are plain strings, or chat messages ``[{"role": "assistant", "content": ...}]`` when the
prompts are chat messages; `as_text` turns either into text. Dataset columns (answer, tests, task, id and
every meta key of `grpo.data.records.Example`) arrive as keyword lists aligned with `completions`. ``None``
means "not applicable to this sample": it is excluded from the group statistics and the weighted total.

Built-in rewards are looked up lazily (import path strings), so importing this module imports neither
sympy nor the sandbox. A recipe names a reward by its registered name, as ``package.module:function``,
or as ``path/to/file.py:function``.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

RewardFn = Callable[..., list]

# name -> "module:function". Filled by the modules that define the rewards; imported only when used.
BUILTIN_REWARDS: dict[str, str] = {
    "accuracy": "grpo.rewards.math:accuracy_reward",
    "format": "grpo.rewards.format:format_reward",
    "tag_count": "grpo.rewards.format:tag_count_reward",
    "code": "grpo.rewards.code:code_reward",
    "reasoning_steps": "grpo.rewards.shaping:reasoning_steps_reward",
    "cosine": "grpo.rewards.shaping:cosine_reward",
    "repetition_penalty": "grpo.rewards.shaping:repetition_penalty_reward",
    "soft_overlong": "grpo.rewards.shaping:soft_overlong_reward",
    "language_consistency": "grpo.rewards.shaping:language_consistency_reward",
}

_REGISTERED: dict[str, RewardFn] = {}


class RewardError(ValueError):
    """A reward could not be found, imported, called, or returned something unusable."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` available to recipes under `name` (overrides a built-in of that name)."""

    def deco(fn: RewardFn) -> RewardFn:
        _REGISTERED[name] = fn
        return fn

    return deco


def available_rewards() -> list[str]:
    return sorted(set(BUILTIN_REWARDS) | set(_REGISTERED))


def _import_attr(module_name: str, attr: str, ref: str) -> RewardFn:
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to see
        raise RewardError(f"reward '{ref}': cannot import module '{module_name}': {type(e).__name__}: {e}") from e
    if not hasattr(module, attr):
        raise RewardError(f"reward '{ref}': module '{module_name}' has no attribute '{attr}'")
    return getattr(module, attr)


def _load_file_attr(path: str, attr: str, ref: str) -> RewardFn:
    p = Path(path).expanduser()
    if not p.is_file():
        raise RewardError(f"reward '{ref}': file not found: {p}")
    mod_name = f"_grpo_user_reward_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise RewardError(f"reward '{ref}': cannot load {p} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        sys.modules.pop(mod_name, None)
        raise RewardError(f"reward '{ref}': importing {p} failed: {type(e).__name__}: {e}") from e
    if not hasattr(module, attr):
        raise RewardError(f"reward '{ref}': {p} defines no '{attr}'")
    return getattr(module, attr)


def resolve_reward(ref: str) -> RewardFn:
    """Turn a recipe's reward name into a callable, or raise RewardError naming the problem."""
    if ref in _REGISTERED:
        return _REGISTERED[ref]
    if ref in BUILTIN_REWARDS:
        module_name, attr = BUILTIN_REWARDS[ref].split(":")
        return _import_attr(module_name, attr, ref)
    if ":" in ref:
        target, attr = ref.rsplit(":", 1)
        if target.endswith(".py") or "/" in target or "\\" in target:
            fn = _load_file_attr(target, attr, ref)
        else:
            fn = _import_attr(target, attr, ref)
        if not callable(fn):
            raise RewardError(f"reward '{ref}': '{attr}' is not callable")
        return fn
    close = difflib.get_close_matches(ref, available_rewards(), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise RewardError(f"unknown reward '{ref}'.{hint} Registered: {', '.join(available_rewards())}; "
                      "or give 'package.module:function' / 'path/to/file.py:function'.")


@dataclass
class RewardSpec:
    """One reward in a recipe: ``{name, weight, kwargs, on_error}``.

    on_error: "raise" (default) stops with a message naming the function and sample; "none" scores the
    batch None for that function and logs a warning.
    """

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    on_error: str = "raise"


@dataclass
class LoadedReward:
    spec: RewardSpec
    fn: RewardFn

    @property
    def label(self) -> str:
        """Metric name: the registered name, or the function's own name for plug-ins."""
        if ":" in self.spec.name:
            return getattr(self.fn, "__name__", self.spec.name.rsplit(":", 1)[1])
        return self.spec.name


def load_rewards(specs: Sequence[RewardSpec]) -> list[LoadedReward]:
    """Resolve every spec up front (before any model loads), so a bad name fails fast."""
    loaded = [LoadedReward(s, resolve_reward(s.name)) for s in specs]
    labels = [r.label for r in loaded]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise RewardError(f"rewards listed twice: {dup}; each reward may appear once")
    for r in loaded:  # a reward may start background work early (the math verifier's sympy helper)
        warm = getattr(r.fn, "warm_up", None)
        if callable(warm):
            warm()
    return loaded


def as_text(completion: Any) -> str:
    """A completion as text, whether it is a string or chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        return "".join(as_text(m) for m in completion)
    raise TypeError(f"completion of unsupported type {type(completion).__name__}")


@dataclass
class RewardTable:
    """Scores of N completions by F reward functions.

    values: N rows x F columns, ``None`` = not applicable. totals(): weighted sum over applicable entries.
    """

    names: list[str]
    weights: list[float]
    values: list[list[float | None]]

    def totals(self) -> list[float]:
        out = []
        for row in self.values:
            out.append(float(sum(w * v for w, v in zip(self.weights, row) if v is not None)))
        return out

    def column(self, name: str) -> list[float | None]:
        j = self.names.index(name)
        return [row[j] for row in self.values]


def _check_output(label: str, out: Any, n: int) -> list[float | None]:
    if not isinstance(out, (list, tuple)):
        raise RewardError(f"reward '{label}' returned {type(out).__name__}, expected a list of {n} floats/None")
    if len(out) != n:
        raise RewardError(f"reward '{label}' returned {len(out)} values for {n} completions")
    clean: list[float | None] = []
    for i, v in enumerate(out):
        if v is None:
            clean.append(None)
            continue
        if isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
            raise RewardError(f"reward '{label}' returned {v!r} ({type(v).__name__}) for sample {i}; "
                              "expected float or None")
        f = float(v)
        if math.isinf(f):
            raise RewardError(f"reward '{label}' returned {f} for sample {i}; rewards must be finite")
        clean.append(None if math.isnan(f) else f)
    return clean


def score(rewards: Sequence[LoadedReward], prompts: list, completions: list, completion_ids: list | None,
          columns: dict[str, list]) -> RewardTable:
    """Call every reward function once on the whole batch (TRL convention) and collect an N x F table."""
    n = len(completions)
    cols: list[list[float | None]] = []
    for r in rewards:
        try:
            out = r.fn(prompts=prompts, completions=completions, completion_ids=completion_ids,
                       **columns, **r.spec.kwargs)
        except RewardError:
            raise
        except Exception as e:  # noqa: BLE001 - name the function and a sample, then stop or degrade
            sample = as_text(completions[0])[:200] if n else ""
            msg = (f"reward '{r.label}' raised {type(e).__name__}: {e} "
                   f"(batch of {n}; first completion: {sample!r})")
            if r.spec.on_error == "none":
                log.warning(msg + " -> scored None")
                cols.append([None] * n)
                continue
            raise RewardError(msg) from e
        cols.append(_check_output(r.label, out, n))
    values = [[c[i] for c in cols] for i in range(n)]
    return RewardTable(names=[r.label for r in rewards], weights=[r.spec.weight for r in rewards], values=values)

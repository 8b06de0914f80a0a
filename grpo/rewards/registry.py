"""Reward registry: names -> reward functions, user plug-ins, and the TRL-compatible call convention.

Every reward is called once per batch the way TRL's GRPOTrainer calls it::

    fn(prompts=..., completions=..., completion_ids=..., **dataset_columns, **recipe_kwargs) -> N values

`prompts` and `completions` take the form TRL passes for the dataset's format, which `data.template`
decides (`grpo.data.templates.is_conversational`):

    data.template     TRL format       prompts[i]                      completions[i]
    plain             standard         the prompt text (a str)         the completion text (a str)
    r1_zero, boxed    conversational   the chat messages (list[dict])  [{"role": "assistant", "content": text}]

so TRL's documented rewards work unchanged: ``[-abs(20 - len(c)) for c in completions]`` with `plain`,
``[c[0]["content"] ... for c in completions]`` with a chat template. An `assistant_prefix` the template
prefills is part of the completion text in both forms. `completion_ids` are the sampled token ids (lists
of ints). `as_text` turns either completion form into text: the built-in rewards use it and take both.

Dataset columns (answer, tests, task, id and every `meta` key of `grpo.data.records.Example`; a source's
`columns:` mapping adds more, e.g. ``{solution: solution}``) arrive as keyword lists aligned with
`completions`. The recipe's `kwargs` are added to every call (over a meta column of the same name).

Return value: N floats or None, as a list, tuple, 1-D numpy array / torch tensor or other iterable; the
entries may be ints, bools, numpy scalars or one-element tensors. ``None`` means "cannot score this
sample": it is left out of the weighted total; a row that no reward scores is left out of the loss, and a
group with fewer than 2 scored rows gets no advantage (`grpo.algorithms.group_advantages`). NaN or inf
is an error naming the reward and the sample.

Errors: a reward that raises or returns something unusable stops the run with a `RewardError` naming the
function and the sample. With ``on_error: none`` the failed samples score None instead (all of the batch
when the call raised, else the bad entries), a warning is logged and the metric `reward/<name>/errors`
counts them.

What a recipe may name, as a registered name, ``package.module:attr`` or ``path/to/file.py:attr``:
- a function, ``def`` or ``async def``;
- an instance with a ``__call__`` method (sync or async): ``judge = Judge(...)`` in my_rewards.py, named
  ``my_rewards.py:judge``;
- a class: instantiated once when the rewards load, with the recipe's `kwargs` as constructor arguments;
  its ``__call__`` then receives the TRL arguments only.
Async rewards are awaited together (``asyncio.gather``, after the batch's synchronous rewards ran) on one
event loop that runs in a background thread for the whole process, as TRL does, so a client an async
reward opens stays usable from step to step.

The recipe-kwargs rule, checked when the recipe is validated and again when the rewards load (both before
any model): each key must name a parameter the function (for a class: its constructor) declares. A key
that no declared parameter names is an error with a did-you-mean even when the function takes
``**kwargs``: ``**kwargs`` is where dataset columns land, and a recipe key nothing declares would vanish
there unread, which is almost always a typo. What the trainer passes to every reward (prompts,
completions, completion_ids, answer, tests, task, id) cannot be set from the recipe. A class's constructor
with ``**kwargs`` takes any key (no column lands there). A function without ``**kwargs`` receives only the
arguments it declares.

Built-in rewards are looked up lazily (import path strings), so importing this module imports neither
sympy nor the sandbox.
"""
from __future__ import annotations

import asyncio
import difflib
import importlib
import importlib.util
import inspect
import logging
import math
import os
import sys
import threading
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
    # imported once while unchanged: the rewards one file defines share its module state (a client, a cache)
    mod_name = f"_grpo_user_reward_{abs(hash((str(p.resolve()), p.stat().st_mtime_ns)))}"
    module = sys.modules.get(mod_name)
    if module is None:
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
    """Turn a recipe's reward name into a callable (a function, an instance, or a class to instantiate),
    or raise RewardError naming the problem."""
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

    kwargs: extra keyword arguments of every call (constructor arguments when `name` is a class).
    on_error: "raise" (default) stops with a message naming the function and sample; "none" scores the
    failed samples None, logs a warning and counts them in the metrics.
    """

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    on_error: str = "raise"


# passed to every reward by the trainer (TRL's arguments and the Example's own columns): no recipe kwarg may
# set them
RESERVED_KWARGS = ("prompts", "completions", "completion_ids", "answer", "tests", "task", "id")


@dataclass
class LoadedReward:
    """A resolved reward. fn: what is called per batch (for a class, its instance); call_kwargs: the recipe
    kwargs passed on each call ({} for a class, whose kwargs went to its constructor); accepts: the keyword
    names fn declares when it takes no **kwargs (only those are passed), None when it takes **kwargs."""

    spec: RewardSpec
    fn: RewardFn
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    accepts: frozenset[str] | None = None

    @property
    def label(self) -> str:
        """Metric name: the registered name, or the function's own name for plug-ins."""
        if ":" in self.spec.name:
            return getattr(self.fn, "__name__", self.spec.name.rsplit(":", 1)[1])
        return self.spec.name


def _parameters(fn: Any) -> tuple[list[str], bool] | None:
    """(names fn declares that a keyword can set, whether it takes **kwargs); None without a signature."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    named = [p.name for p in sig.parameters.values()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def kwargs_problem(label: str, fn: Any, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """(the first recipe kwarg `fn` cannot take, why) under the rule in the module docstring, or None. For a
    class the constructor's parameters count, and a constructor's **kwargs takes any key (no dataset column
    lands there). grpo.config reports the same problems, with the recipe key, when it validates a recipe."""
    constructor = inspect.isclass(fn)
    params = _parameters(fn)
    if params is None:
        return None
    named, open_ended = params
    for key in kwargs:
        if key in RESERVED_KWARGS and not constructor:
            return key, (f"'{key}' is passed to every reward by the trainer (a dataset column or the completions); "
                         "it cannot be set here")
        if key in named or (constructor and open_ended):
            continue
        options = [p for p in named if constructor or p not in RESERVED_KWARGS]
        close = difflib.get_close_matches(str(key), options, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return key, (f"reward '{label}' has no option '{key}'{hint} (its options: {', '.join(options) or 'none'}; "
                     "a recipe kwarg must name a declared parameter: **kwargs receives only dataset columns)")
    return None


def _load_one(spec: RewardSpec) -> LoadedReward:
    fn = resolve_reward(spec.name)
    label = LoadedReward(spec, fn).label
    call_kwargs = dict(spec.kwargs)
    problem = kwargs_problem(label, fn, spec.kwargs)
    if problem is not None:
        raise RewardError(f"kwargs.{problem[0]}: {problem[1]}")
    if inspect.isclass(fn):  # built once, with the recipe's kwargs as constructor arguments
        try:
            fn = fn(**spec.kwargs)
        except Exception as e:  # noqa: BLE001
            raise RewardError(f"reward '{label}': {label}(**{spec.kwargs}) failed: {type(e).__name__}: {e}") from e
        if not callable(fn):
            raise RewardError(f"reward '{label}': instances of class {label} are not callable (no __call__)")
        call_kwargs = {}
    params = _parameters(fn)
    accepts = frozenset(params[0]) if params is not None and not params[1] else None
    return LoadedReward(spec, fn, call_kwargs, accepts)


def load_rewards(specs: Sequence[RewardSpec]) -> list[LoadedReward]:
    """Resolve every spec up front (before any model loads), so a bad name or kwarg fails fast."""
    loaded = [_load_one(s) for s in specs]
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

    values: N rows x F columns, ``None`` = not applicable (or failed under ``on_error: none``).
    errors: per function, how many of its entries are None because the reward failed.
    """

    names: list[str]
    weights: list[float]
    values: list[list[float | None]]
    errors: list[int] = field(default_factory=list)

    def scored(self) -> list[bool]:
        """Per row: some reward applies (the row takes part in the loss)."""
        return [any(v is not None for v in row) for row in self.values]

    def totals(self) -> list[float]:
        """Per row: the weighted sum over the applicable entries; NaN for a row no reward scored."""
        return [float(sum(w * v for w, v in zip(self.weights, row) if v is not None))
                if any(v is not None for v in row) else math.nan for row in self.values]

    def column(self, name: str) -> list[float | None]:
        j = self.names.index(name)
        return [row[j] for row in self.values]

    def constant_columns(self) -> dict[str, float]:
        """Rewards that gave every scored row (at least 2) the same value: name -> that value."""
        out = {}
        for name in self.names:
            vals = {v for v in self.column(name) if v is not None}
            if len(vals) == 1 and sum(v is not None for v in self.column(name)) > 1:
                out[name] = vals.pop()
        return out


# ------------------------------------------------------------------------------------------ calling

_LOOP: tuple[int, asyncio.AbstractEventLoop] | None = None
_LOOP_LOCK = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for async rewards, running in a daemon thread (one per process: a forked
    child starts its own)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP[0] != os.getpid() or _LOOP[1].is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="grpo-async-rewards", daemon=True).start()
            _LOOP = (os.getpid(), loop)
        return _LOOP[1]


def _await_all(awaitables: list) -> list:
    """Await them concurrently; each result, or the exception it raised, in order. Works whether or not
    the caller runs inside an event loop of its own."""
    async def gather():
        return await asyncio.gather(*awaitables, return_exceptions=True)

    return asyncio.run_coroutine_threadsafe(gather(), _event_loop()).result()


@dataclass
class _Raised:
    error: BaseException


def _call(r: LoadedReward, prompts: list, completions: list, completion_ids: list | None,
          columns: dict[str, list]) -> Any:
    kw = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **columns,
          **r.call_kwargs}
    if r.accepts is not None:
        kw = {k: v for k, v in kw.items() if k in r.accepts}
    return r.fn(**kw)


def _as_list(label: str, out: Any, n: int) -> list:
    """A reward's output as a list of n entries (lists, tuples, 1-D arrays and tensors, iterables)."""
    if not isinstance(out, (list, tuple)):
        if out is None or isinstance(out, (str, bytes, dict, float, int)):
            raise RewardError(f"reward '{label}' returned {type(out).__name__}, expected a list of {n} floats/None")
        if getattr(out, "ndim", None) is not None:  # numpy array, torch tensor (no import needed)
            if out.ndim != 1:
                raise RewardError(f"reward '{label}' returned an array of shape {tuple(out.shape)}, expected "
                                  f"{n} values (1-D)")
            out = out.tolist()
        else:
            try:
                out = list(out)
            except TypeError:
                raise RewardError(f"reward '{label}' returned {type(out).__name__}, expected a list of {n} "
                                  "floats/None") from None
    if len(out) != n:
        raise RewardError(f"reward '{label}' returned {len(out)} values for {n} completions")
    return list(out)


def _entry(v: Any) -> tuple[float | None, str | None]:
    """(the value as a float or None, what is wrong with it or None)."""
    if v is None:
        return None, None
    if isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
        return None, f"{v!r} ({type(v).__name__})"
    try:
        f = float(v)
    except Exception:  # noqa: BLE001 - e.g. a tensor of several elements
        return None, f"{v!r} ({type(v).__name__})"
    if math.isnan(f):
        return None, "NaN"
    if math.isinf(f):
        return None, str(f)
    return f, None


def _sample(i: int, completions: list, columns: dict[str, list]) -> str:
    ids = columns.get("id")
    where = f"id {ids[i]!r}, " if ids is not None and i < len(ids) else ""
    return f"sample {i} ({where}completion {as_text(completions[i])[:200]!r})"


def _column(r: LoadedReward, out: Any, completions: list, columns: dict[str, list]) -> tuple[list, int]:
    """One reward's N values and how many failed, from its output; RewardError unless on_error: none."""
    n, degrade = len(completions), r.spec.on_error == "none"
    if isinstance(out, _Raised):
        e = out.error
        if isinstance(e, RewardError) and not degrade:
            raise e
        first = as_text(completions[0])[:200] if n else ""
        msg = f"reward '{r.label}' raised {type(e).__name__}: {e} (batch of {n}; first completion: {first!r})"
        if not degrade:
            raise RewardError(msg) from e
        log.warning("%s -> all %d samples scored None", msg, n)
        return [None] * n, n
    try:
        vals = _as_list(r.label, out, n)
    except RewardError as e:
        if not degrade:
            raise
        log.warning("%s -> all %d samples scored None", e, n)
        return [None] * n, n
    clean, bad = [], []
    for i, v in enumerate(vals):
        f, problem = _entry(v)
        clean.append(f)
        if problem is not None:
            bad.append((i, problem))
    if bad:
        i, problem = bad[0]
        more = f" (and {len(bad) - 1} more samples)" if len(bad) > 1 else ""
        msg = f"reward '{r.label}' returned {problem} for {_sample(i, completions, columns)}{more}"
        if not degrade:
            raise RewardError(msg + "; a reward must return a finite float, or None for a sample it cannot score "
                              "(on_error: none scores failures None)")
        log.warning("%s -> %d samples scored None", msg, len(bad))
    return clean, len(bad)


def score(rewards: Sequence[LoadedReward], prompts: list, completions: list, completion_ids: list | None,
          columns: dict[str, list]) -> RewardTable:
    """Call every reward function once on the whole batch (TRL convention) and collect an N x F table.
    Synchronous rewards run first, one after the other; then the async ones, together."""
    outs: list[Any] = [None] * len(rewards)
    waiting: dict[int, Any] = {}
    for j, r in enumerate(rewards):
        try:
            out = _call(r, prompts, completions, completion_ids, columns)
        except Exception as e:  # noqa: BLE001 - named with a sample in _column
            out = _Raised(e)
            if r.spec.on_error != "none":
                for w in waiting.values():  # never awaited: close them quietly
                    getattr(w, "close", lambda: None)()
                _column(r, out, completions, columns)
        if inspect.isawaitable(out):
            waiting[j] = out
        else:
            outs[j] = out
    if waiting:
        for j, res in zip(waiting, _await_all(list(waiting.values()))):
            outs[j] = _Raised(res) if isinstance(res, BaseException) else res
    cols, errors = [], []
    for r, out in zip(rewards, outs):
        col, failed = _column(r, out, completions, columns)
        cols.append(col)
        errors.append(failed)
    values = [[c[i] for c in cols] for i in range(len(completions))]
    return RewardTable(names=[r.label for r in rewards], weights=[r.spec.weight for r in rewards], values=values,
                       errors=errors)

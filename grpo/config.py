"""One validated configuration tree for a GRPO run: YAML recipe + `--set key=value` overrides.

Unknown keys (with a close-match suggestion), wrong types and bad values are `ConfigError`s that name the
key path (e.g. ``optim.lr``), raised before any model or dataset is loaded. The resolved tree is saved
in the run directory and in every checkpoint.

Three layers, each refusing what it can: the YAML loader (a key given twice in one mapping), `build`
(unknown keys, types) and `validate`, the one validator of every stage: it walks any config tree and runs
the value checks each dataclass registers with `@checks` (this module's classes here, the other stages'
in grpo.stages). Checks reach into plug-ins without loading data or models: reward names resolve (a
plug-in module is imported) and their kwargs must be options the function takes; data sources must
exist and take the given options; model.adapter keys are the adapters' own; optim.prompts_per_step must
split over the launcher's processes.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from grpo.algorithms import LOSS_TYPES, SCALE_REWARDS
from grpo.rewards.registry import RewardSpec


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key."""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"   # bundled alias, local dir, .gguf path or Hub id
    adapter: dict[str, Any] = field(default_factory=dict)  # {"mla": {...}, "moe": {...}}, see grpo.adapters
    gradient_checkpointing: bool = False
    compile: bool = False                 # torch.compile the layers for training (grpo.models.compile_blocks)
    cuda_graphs: bool = False             # replay the update's forward/backward from CUDA graphs (grpo.graphed)
    trust_remote_code: bool = False


@dataclass
class DatasetConfig:
    source: str = "arithmetic"            # a name in data.SOURCES
    options: dict[str, Any] = field(default_factory=dict)  # passed to the source's loader
    limit: int | None = None
    shuffle: bool = False
    shuffle_seed: int = 0

    def load(self, **extra):
        """The Examples this config names (`data.load_examples`); `extra` overrides options (e.g. dedup=False)."""
        from grpo.data import load_examples

        return load_examples(self.source, limit=self.limit, shuffle=self.shuffle, shuffle_seed=self.shuffle_seed,
                             **{**self.options, **extra})


@dataclass
class DataConfig:
    train: DatasetConfig = field(default_factory=DatasetConfig)
    eval: DatasetConfig | None = None
    template: str = "r1_zero"             # grpo.data.templates.TEMPLATES
    assistant_prefix: str = ""            # text the assistant turn starts with (e.g. "<think>")
    max_prompt_tokens: int | None = None  # left-truncate longer prompts (a warning counts them); unset: a prompt
    #                                       that cannot fit the model's context with max_new_tokens is an error


@dataclass
class SamplingConfig:
    backend: str = "hf"                   # "hf" (transformers generate) or "engine" (grpo.engine)
    group_size: int = 8                   # G completions per prompt
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 256                 # rows per sampling call


@dataclass
class AlgorithmConfig:
    loss_type: str = "grpo"               # grpo | bnpo | dr_grpo | dapo
    scale_rewards: str = "group"          # group | batch | none
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2            # DAPO's clip-higher uses 0.28
    kl_coef: float = 0.0                  # beta; 0 loads no reference model
    num_iterations: int = 1               # mu: policy updates per batch of rollouts
    mask_truncated: bool = False          # drop completions that hit max_new_tokens from the loss
    adv_eps: float = 1e-4


@dataclass
class OptimConfig:
    steps: int = 100
    prompts_per_step: int = 8             # B prompts -> B * G completions per step
    micro_batch_size: int = 16            # rows per forward/backward (gradient accumulation)
    micro_batch_tokens: int | str = "auto"  # and at most this many tokens (rows x (prompt + completion)): N, 0 = no
                                          # limit, auto = from free device memory (<= 65,536; CPU: no limit)
    oom_retry: bool = True                # out of memory in the update: halve the micro-batch, run it again
    lr: float = 1e-6
    optimizer: str = "adamw"              # adamw | adamw_8bit (torchao's AdamW8bit: 8-bit moments, 1/4 of the memory)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 0
    schedule: str = "constant"            # constant | linear | cosine (decay after warmup)
    max_grad_norm: float = 1.0


@dataclass
class EvalConfig:
    metric: str = "accuracy"              # reward deciding "correct" (value >= 1.0) for pass@k
    max_new_tokens: int = 128
    num_samples: int = 1                  # > 1: sampled pass@k at `temperature` besides greedy pass@1
    temperature: float = 1.0
    batch_size: int = 256
    before: bool = True                   # evaluate the initial model
    after: bool = True                    # evaluate the final model
    every: int = 0                        # also every N steps (0 = never)


@dataclass
class RunConfig:
    output_dir: str = "runs/grpo"
    seed: int = 0
    save_every: int = 0                   # checkpoint every N steps (0: only at the end)
    keep_last: int = 2
    save_optimizer: bool = True           # Adam's two moments in checkpoints (2 x fp32 per parameter, twice the
                                          # fp32 weights): --resume continues exactly; false: weights, schedule,
                                          # RNG and data position only (a resume starts fresh moments)
    save_completions: bool = True
    trackers: list[str] = field(default_factory=list)   # tensorboard | wandb | trackio (if installed)
    mixed_precision: str = "auto"         # auto: bf16 autocast on GPU and bf16-capable CPUs (AMX), else fp32 | bf16 | no
    torch_threads: int = 0                # 0: 1 when training on CUDA (grpo.train.setup), else torch's default
    progress: bool = True
    no_signal_warn_steps: int = 5         # warn after N steps in a row where every group's rewards are equal (0: off)


@dataclass
class GRPOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("accuracy"), RewardSpec("format")])
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ---------------------------------------------------------------- building dataclasses from dicts

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and tp is RewardSpec:
            value = {"name": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-6 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")


def build(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Instantiate dataclass `cls` from `data`, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{(path + '.' if path else '') + close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{full}'{hint} (valid here: {', '.join(names)})")
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- YAML: recipes and --set values

class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key '{key}' at line {line} (first at line {first})")
        self.key, self.line, self.first = key, line, first


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: plain YAML keeps the last one, so a
    repeated `optim:` block would silently replace the first. Keys merged in with `<<: *anchor` may still
    be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:   # an unhashable key: SafeLoader reports it below
                    continue
                if first is not None:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, first)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML text -> Python values, refusing duplicate keys (`_RecipeLoader`)."""
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    try:
        value = parse_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {e}") from e
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"--set {key}: '{p}' is not a mapping")
        node = node[p]
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe not found: {p}")
    try:
        data = parse_yaml(p.read_text()) or {}
    except _DuplicateKey as e:
        raise ConfigError(f"recipe {p}: {e}; a repeated key would silently replace the first one") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {p} must be a mapping at the top level, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------- the launcher's processes

def launch_processes() -> tuple[int, int]:
    """(this process's index, process count) as the launcher (torchrun / accelerate launch / mpirun) set
    them in the environment; (0, 1) for a plain `python`. Read without making a process group, so that
    validation can use it before anything is loaded."""
    def first(names: tuple[str, ...], default: int) -> int:
        for n in names:
            v = os.environ.get(n, "")
            if v.strip().isdigit():
                return int(v)
        return default

    count = first(("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"), 1)
    index = first(("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"), 0)
    return index, max(count, 1)


# ---------------------------------------------------------------- value checks (one validator for every stage)

class Need:
    """`need(cond, key, msg)` raises ConfigError('<where>.<key>: msg') when `cond` is false; `need.key(k)` is
    the full key path of `k` at this place of the tree."""

    def __init__(self, where: str = ""):
        self.where = where

    def key(self, name: str = "") -> str:
        return ".".join(p for p in (self.where, name) if p)

    def __call__(self, cond: bool, name: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{self.key(name)}: {msg}")


_CHECKS: dict[type, list[Callable[[Any, Need], None]]] = {}


def checks(cls: type) -> Callable:
    """Register `fn(obj, need)` as a value check of dataclass `cls`. `validate` runs it at every place of a
    config tree that holds a `cls` (a stage's own classes register theirs in grpo.stages)."""

    def deco(fn: Callable[[Any, Need], None]) -> Callable[[Any, Need], None]:
        _CHECKS.setdefault(cls, []).append(fn)
        return fn

    return deco


def validate(cfg: Any, where: str = "") -> Any:
    """Run every registered value check over the dataclass tree `cfg` (any stage's config): each node's
    children first, then the node itself (its cross-field checks). Raises ConfigError naming the full
    key. Cheap: nothing is loaded (reward plug-ins are imported, data sources are not read)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = ".".join(p for p in (where, f.name) if p)
        if dataclasses.is_dataclass(value):
            validate(value, key)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    validate(item, f"{key}[{i}]")
    for fn in _CHECKS.get(type(cfg), []):
        fn(cfg, Need(where))
    return cfg


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive(need: Need, obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        need(_finite(v) and v > 0, n, f"must be positive, got {v}")


def at_least(need: Need, obj: Any, low: float, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        need(_finite(v) and v >= low, n, f"must be >= {low}, got {v}")


def one_of(need: Need, obj: Any, name: str, allowed: tuple[str, ...] | list[str]) -> None:
    v = getattr(obj, name)
    if v in allowed:
        return
    close = difflib.get_close_matches(str(v), list(allowed), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    need(False, name, f"must be one of {' | '.join(allowed)}, got {v!r}{hint}")


def check_template(need: Need, data: Any) -> None:
    """The prompt keys every stage's data block has: the template and the optional prompt-length cap."""
    from grpo.data.templates import TEMPLATES

    need(data.template in TEMPLATES, "template", f"must be one of {TEMPLATES}, got {data.template!r}")
    n = data.max_prompt_tokens
    need(n is None or n > 0, "max_prompt_tokens", f"must be a positive number of tokens (or unset), got {n}")


def check_adam(need: Need, o: Any) -> None:
    """The optimizer and LR-schedule keys GRPO and the SFT-like stages share."""
    positive(need, o, "lr", "max_grad_norm")
    at_least(need, o, 0, "weight_decay", "warmup_steps")
    need(len(o.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in o.betas), "betas",
         f"must be two numbers in [0, 1), got {o.betas}")
    one_of(need, o, "schedule", ("constant", "linear", "cosine"))


@checks(ModelConfig)
def _check_model(m: ModelConfig, need: Need) -> None:
    need(bool(m.name.strip()), "name", "must name a model (bundled alias, local directory, .gguf file or Hub id)")
    if m.adapter:
        check_adapter(m.adapter, Need(need.key("adapter")))


def check_adapter(adapter: dict[str, Any], need: Need) -> None:
    """model.adapter: known adapters (with a suggestion), each one's keys, types and values, as
    `grpo.adapters.apply_adapters` will read them. Imports grpo.adapters only when an adapter is set."""
    from grpo.adapters import ADAPTER_KEYS, MLAConfig, MoEConfig

    classes = {"mla": MLAConfig, "moe": MoEConfig}
    for name, sub in adapter.items():
        if name not in ADAPTER_KEYS:
            close = difflib.get_close_matches(str(name), ADAPTER_KEYS, n=1)
            hint = f"; did you mean '{need.key(close[0])}'?" if close else ""
            raise ConfigError(f"unknown key '{need.key(str(name))}'{hint} (valid here: {', '.join(ADAPTER_KEYS)})")
        where = need.key(name)
        sub = {} if sub is None else sub
        if not isinstance(sub, dict):
            raise ConfigError(f"{where}: expected a mapping of {name} settings, got {type(sub).__name__} {sub!r}")
        typed = build(classes[name], sub, where)
        try:
            classes[name].from_dict({k: getattr(typed, k) for k in sub})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from e


@checks(DatasetConfig)
def _check_dataset(d: DatasetConfig, need: Need) -> None:
    need(d.limit is None or d.limit >= 1, "limit", f"must be positive, got {d.limit} (leave it out for every example)")
    check_source_options(d.source, d.options, need)


def check_source_options(source: str, options: dict[str, Any], need: Need) -> None:
    """The source exists and its loader takes these options (names only: nothing is read here, so a file
    an earlier pipeline stage will write may not exist yet)."""
    import inspect

    from grpo.data import DataError, _loader

    try:
        fn = _loader(source)
    except DataError as e:
        raise ConfigError(f"{need.key('source')}: {e}") from e
    where = need.key("options")
    for own in ("limit", "shuffle", "shuffle_seed"):
        if own in options:
            raise ConfigError(f"{where}.{own}: set it next to source ({need.key(own)}), not among the source's options")
    params = inspect.signature(fn).parameters
    takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)] + ["dedup"]
    rest = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in options:
        if key not in takes and not rest:
            close = difflib.get_close_matches(str(key), takes, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: data source '{source}': unknown option '{key}'{hint} "
                              f"(options: {', '.join(takes)})")
    for n, p in params.items():
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in options:
            raise ConfigError(f"{where}: data source '{source}' needs the option '{n}'")
    if rest and source == "cold_start":   # cold_start(dataset=..., **that source's options)
        inner = str(options.get("dataset", "arithmetic"))
        if inner == "cold_start":
            raise ConfigError(f"{where}.dataset: must name another source, e.g. gsm8k or arithmetic")
        check_source_options(inner, {k: v for k, v in options.items() if k not in ("dataset", "dedup")},
                             Need(where))


@checks(DataConfig)
def _check_data(d: DataConfig, need: Need) -> None:
    check_template(need, d)


@checks(SamplingConfig)
def _check_sampling(s: SamplingConfig, need: Need) -> None:
    one_of(need, s, "backend", ("hf", "engine"))
    positive(need, s, "group_size", "max_new_tokens", "batch_size")
    at_least(need, s, 0, "temperature", "top_k")
    need(_finite(s.top_p) and 0 < s.top_p <= 1, "top_p", f"must be in (0, 1], got {s.top_p}")


@checks(AlgorithmConfig)
def _check_algorithm(a: AlgorithmConfig, need: Need) -> None:
    one_of(need, a, "loss_type", LOSS_TYPES)
    one_of(need, a, "scale_rewards", SCALE_REWARDS)
    need(_finite(a.clip_eps_low) and 0 <= a.clip_eps_low < 1, "clip_eps_low", f"must be in [0, 1), got {a.clip_eps_low}")
    at_least(need, a, 0, "clip_eps_high", "kl_coef")
    at_least(need, a, 1, "num_iterations")
    positive(need, a, "adv_eps")   # std + adv_eps divides: 0 would make a group of equal rewards NaN


@checks(OptimConfig)
def _check_optim(o: OptimConfig, need: Need) -> None:
    positive(need, o, "steps", "prompts_per_step", "micro_batch_size")
    t = o.micro_batch_tokens
    need(t == "auto" or (isinstance(t, int) and not isinstance(t, bool) and t >= 0), "micro_batch_tokens",
         f"must be auto or a token count >= 0, got {t!r}")
    one_of(need, o, "optimizer", ("adamw", "adamw_8bit"))
    check_adam(need, o)


@checks(EvalConfig)
def _check_eval(e: EvalConfig, need: Need) -> None:
    need(bool(e.metric), "metric", "must name a reward")
    positive(need, e, "max_new_tokens", "batch_size")
    at_least(need, e, 1, "num_samples")
    at_least(need, e, 0, "every", "temperature")
    need(e.num_samples == 1 or e.temperature > 0, "temperature",
         f"must be > 0 to sample num_samples = {e.num_samples} completions per prompt, got {e.temperature}")


@checks(RunConfig)
def _check_run(r: RunConfig, need: Need) -> None:
    need(bool(r.output_dir.strip()), "output_dir", "must name a directory")
    need(0 <= r.seed < 2**32, "seed", f"must be in [0, 2**32), got {r.seed}")   # numpy's seed range
    at_least(need, r, 0, "save_every", "torch_threads", "no_signal_warn_steps")
    at_least(need, r, 1, "keep_last")
    one_of(need, r, "mixed_precision", ("auto", "bf16", "no"))
    from grpo.tracking import _TRACKER_MODULES

    for i, t in enumerate(r.trackers):
        close = difflib.get_close_matches(t, _TRACKER_MODULES, n=1)
        need(t in _TRACKER_MODULES, "trackers", f"unknown tracker '{t}'"
             + (f"; did you mean '{close[0]}'?" if close else "") + f" (known: {', '.join(_TRACKER_MODULES)})")


@checks(RewardSpec)
def _check_reward_spec(r: RewardSpec, need: Need) -> None:
    need(bool(r.name.strip()), "name", "must name a reward")
    need(_finite(r.weight), "weight", f"must be a finite number, got {r.weight}")
    one_of(need, r, "on_error", ("raise", "none"))


def check_rewards(specs: list[RewardSpec], need: Need, key: str = "rewards", required: bool = True) -> dict[str, Any]:
    """Resolve every reward (built-in, registered or plug-in: a plug-in module is imported here, before any
    model loads), refuse a reward listed twice and kwargs the function does not take (the rule of
    grpo.rewards.registry.kwargs_problem). Returns {metric label: function}."""
    from grpo.rewards.registry import LoadedReward, RewardError, kwargs_problem, resolve_reward

    need(len(specs) > 0 or not required, key, "at least one reward is needed")
    labels: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        where = need.key(f"{key}[{i}]")
        try:
            fn = resolve_reward(spec.name)
        except RewardError as e:
            raise ConfigError(f"{where}.name: {e}") from e
        label = LoadedReward(spec, fn).label
        if label in labels:
            raise ConfigError(f"{need.key(key)}: rewards listed twice: ['{label}']; each reward may appear once")
        labels[label] = fn
        problem = kwargs_problem(label, fn, spec.kwargs)
        if problem is not None:
            raise ConfigError(f"{where}.kwargs.{problem[0]}: {problem[1]}")
    return labels


def check_metric(metric: str, labels: dict[str, Any], need: Need, key: str = "eval.metric") -> None:
    """The reward deciding "correct" in evaluation: one of the configured rewards (by its metric name), or
    a built-in / registered reward, which the evaluation adds."""
    from grpo.rewards.registry import available_rewards

    if metric in labels or metric in available_rewards():
        return
    close = difflib.get_close_matches(metric, list(labels) + available_rewards(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"{need.key(key)}: unknown reward '{metric}'{hint} (configured rewards: {', '.join(labels)}; "
                      "a plug-in metric must be listed under rewards and named by its function name)")


@checks(GRPOConfig)
def _check_grpo(cfg: GRPOConfig, need: Need) -> None:
    s = cfg.sampling
    need(s.group_size >= 2, "sampling.group_size", f"must be >= 2 for group-relative advantages, got {s.group_size}")
    need(s.temperature > 0, "sampling.temperature", f"must be > 0 for GRPO sampling, got {s.temperature}")
    _, n = launch_processes()
    b = cfg.optim.prompts_per_step
    need(b % n == 0, "optim.prompts_per_step",
         f"{b} prompts cannot be split evenly over {n} processes (each process samples whole groups); "
         f"use a multiple of {n}")
    labels = check_rewards(cfg.rewards, need)
    check_metric(cfg.eval.metric, labels, need)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> GRPOConfig:
    """Recipe file (or `base` dict) + overrides -> validated GRPOConfig."""
    tree = dict(base or {})
    if path is not None:
        tree = read_yaml(path)
    tree.pop("stage", None)
    for ov in overrides or []:
        apply_override(tree, ov)
    return validate(build(GRPOConfig, tree))


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

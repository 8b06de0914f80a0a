"""One validated configuration tree for a GRPO run: YAML recipe + `--set key=value` overrides.

Unknown keys (with a close-match suggestion), wrong types and bad values are `ConfigError`s that name the
key path (e.g. ``optim.lr``), raised before any model or dataset is loaded. The resolved tree is saved
in the run directory and in every checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    lr: float = 1e-6
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
    save_completions: bool = True
    trackers: list[str] = field(default_factory=list)   # tensorboard | wandb | trackio (if installed)
    mixed_precision: str = "auto"         # auto: bf16 autocast on GPU and bf16-capable CPUs (AMX), else fp32 | bf16 | no
    torch_threads: int = 0                # 0: 1 when training on CUDA (grpo.train.setup), else torch's default
    progress: bool = True


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


# ---------------------------------------------------------------- overrides and loading

def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
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
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {p} must be a mapping at the top level, got {type(data).__name__}")
    return data


def validate(cfg: GRPOConfig) -> GRPOConfig:
    """Value checks that types cannot express. Raises ConfigError naming the key."""
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}")

    s, a, o, e = cfg.sampling, cfg.algorithm, cfg.optim, cfg.eval
    need(s.group_size >= 2, "sampling.group_size", f"must be >= 2 for group-relative advantages, got {s.group_size}")
    need(s.max_new_tokens > 0, "sampling.max_new_tokens", f"must be positive, got {s.max_new_tokens}")
    need(s.temperature > 0, "sampling.temperature", f"must be > 0 for GRPO sampling, got {s.temperature}")
    need(0 < s.top_p <= 1, "sampling.top_p", f"must be in (0, 1], got {s.top_p}")
    need(s.top_k >= 0, "sampling.top_k", f"must be >= 0, got {s.top_k}")
    need(s.batch_size > 0, "sampling.batch_size", f"must be positive, got {s.batch_size}")
    need(s.backend in ("hf", "engine"), "sampling.backend", f"must be 'hf' or 'engine', got {s.backend!r}")
    need(not (s.backend == "engine" and "moe" in (cfg.model.adapter or {})), "sampling.backend",
         "the engine cannot serve model.adapter moe (its decoder has no expert routing and records no routes "
         "for routing replay); use sampling.backend: hf")
    need(a.loss_type in LOSS_TYPES, "algorithm.loss_type", f"must be one of {LOSS_TYPES}, got {a.loss_type!r}")
    need(a.scale_rewards in SCALE_REWARDS, "algorithm.scale_rewards",
         f"must be one of {SCALE_REWARDS}, got {a.scale_rewards!r}")
    need(0 <= a.clip_eps_low < 1, "algorithm.clip_eps_low", f"must be in [0, 1), got {a.clip_eps_low}")
    need(a.clip_eps_high >= 0, "algorithm.clip_eps_high", f"must be >= 0, got {a.clip_eps_high}")
    need(a.kl_coef >= 0, "algorithm.kl_coef", f"must be >= 0, got {a.kl_coef}")
    need(a.num_iterations >= 1, "algorithm.num_iterations", f"must be >= 1, got {a.num_iterations}")
    need(o.steps > 0, "optim.steps", f"must be positive, got {o.steps}")
    need(o.prompts_per_step > 0, "optim.prompts_per_step", f"must be positive, got {o.prompts_per_step}")
    need(o.micro_batch_size > 0, "optim.micro_batch_size", f"must be positive, got {o.micro_batch_size}")
    need(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", f"must be two numbers in [0, 1), got {o.betas}")
    need(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    need(o.schedule in ("constant", "linear", "cosine"), "optim.schedule",
         f"must be constant | linear | cosine, got {o.schedule!r}")
    need(o.max_grad_norm > 0, "optim.max_grad_norm", f"must be positive, got {o.max_grad_norm}")
    need(e.max_new_tokens > 0, "eval.max_new_tokens", f"must be positive, got {e.max_new_tokens}")
    need(e.num_samples >= 1, "eval.num_samples", f"must be >= 1, got {e.num_samples}")
    need(e.every >= 0, "eval.every", f"must be >= 0, got {e.every}")
    need(cfg.run.save_every >= 0, "run.save_every", f"must be >= 0, got {cfg.run.save_every}")
    need(cfg.run.keep_last >= 1, "run.keep_last", f"must be >= 1, got {cfg.run.keep_last}")
    need(cfg.run.mixed_precision in ("auto", "bf16", "no"), "run.mixed_precision",
         f"must be auto | bf16 | no, got {cfg.run.mixed_precision!r}")
    from grpo.tracking import _TRACKER_MODULES
    for t in cfg.run.trackers:
        close = difflib.get_close_matches(t, _TRACKER_MODULES, n=1)
        need(t in _TRACKER_MODULES, "run.trackers", f"unknown tracker '{t}'"
             + (f"; did you mean '{close[0]}'?" if close else "") + f" (known: {', '.join(_TRACKER_MODULES)})")
    need(len(cfg.rewards) > 0, "rewards", "at least one reward is needed")
    for i, r in enumerate(cfg.rewards):
        need(r.on_error in ("raise", "none"), f"rewards[{i}].on_error", f"must be raise | none, got {r.on_error!r}")
    from grpo.data.templates import TEMPLATES
    need(cfg.data.template in TEMPLATES, "data.template", f"must be one of {TEMPLATES}, got {cfg.data.template!r}")
    check_max_prompt_tokens(cfg.data.max_prompt_tokens)
    return cfg


def check_max_prompt_tokens(n: int | None) -> None:
    if n is not None and n <= 0:
        raise ConfigError(f"data.max_prompt_tokens: must be a positive number of tokens (or unset), got {n}")


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

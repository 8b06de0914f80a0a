"""Configuration of the non-GRPO stages (sft, rejection_sampling, distill, eval) and the one dispatch
point `run_stage(kind, tree)` used by `grpo run` and the pipeline.

A recipe with a top-level ``stage:`` key is one of these; a recipe without it is GRPO (grpo.config).
The pieces GRPO already has (ModelConfig, DatasetConfig, SamplingConfig, EvalConfig, RunConfig, reward
specs) are reused, so a key means the same thing in every stage. Each config is validated (types by
`grpo.config.build`, values by `validate_stage`) before any model or dataset is loaded.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo.config import (ConfigError, DatasetConfig, EvalConfig, GRPOConfig, ModelConfig, RunConfig,
                         SamplingConfig, apply_override, build, check_max_prompt_tokens, validate)
from grpo.rewards.registry import RewardSpec

STAGE_KINDS = ("grpo", "sft", "rejection_sampling", "distill", "eval")
# stage kind -> "module:function(cfg, model=None, tokenizer=None) -> summary dict"
_RUNNERS = {
    "grpo": "grpo.train:train",
    "sft": "grpo.sft:run_sft",
    "rejection_sampling": "grpo.rejection:run_rejection",
    "distill": "grpo.distill:run_distill",
    "eval": "grpo.pipeline:run_eval_stage",
}


@dataclass
class SFTDataConfig:
    train: DatasetConfig = field(default_factory=DatasetConfig)
    mix: list[DatasetConfig] = field(default_factory=list)   # more training sets, concatenated with `train`
    eval: DatasetConfig | None = None                        # held-out set for eval loss
    template: str = "r1_zero"
    assistant_prefix: str = ""
    completion_key: str = "completion"                      # target text in Example.meta
    packing: bool = False                                   # concatenate examples into max_seq_len rows
    max_seq_len: int = 1024
    max_prompt_tokens: int | None = None                    # left-truncate longer prompts (grpo.config.DataConfig)


@dataclass
class SFTOptimConfig:
    epochs: int = 1
    steps: int = 0                        # > 0: stop after this many optimizer steps (overrides epochs)
    batch_size: int = 8                   # rows per optimizer step
    micro_batch_size: int = 8             # rows per forward/backward
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: str = "cosine"              # constant | linear | cosine
    max_grad_norm: float = 1.0


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    optim: SFTOptimConfig = field(default_factory=SFTOptimConfig)
    eval_every: int = 0                   # eval loss every N steps (0: only before and after)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/sft"))


@dataclass
class PromptDataConfig:
    train: DatasetConfig = field(default_factory=DatasetConfig)
    template: str = "r1_zero"
    assistant_prefix: str = ""
    max_prompt_tokens: int | None = None  # left-truncate longer prompts (grpo.config.DataConfig)


@dataclass
class RejectionConfig:
    """Sample `sampling.group_size` completions per prompt, keep the verified ones."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("accuracy"), RewardSpec("format")])
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    accept: dict[str, float] = field(default_factory=dict)   # reward -> minimum value (default 1.0; language_consistency 0.95)
    max_per_prompt: int = 2
    keep_truncated: bool = False
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/rejection"))


@dataclass
class StudentConfig:
    name: str | None = None                                   # any model sharing the teacher's tokenizer
    from_teacher: dict[str, Any] = field(default_factory=dict)  # {keep_every: 2} or {keep_layers: [0, 2]}


@dataclass
class DistillLossConfig:
    kind: str = "forward"                 # forward | reverse | jsd | ce (no teacher: the SFT baseline)  (grpo.distill)
    beta: float = 0.5                     # jsd mixture weight
    temperature: float = 1.0


@dataclass
class DistillConfig:
    mode: str = "logit"                   # logit: KL to the teacher's distribution; sequence: SFT on verified teacher samples
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: DistillLossConfig = field(default_factory=DistillLossConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    text: str = "teacher"                 # logit mode: train on teacher samples ("teacher") or data completions ("data")
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("accuracy"), RewardSpec("format")])
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(group_size=1))
    max_per_prompt: int = 1
    optim: SFTOptimConfig = field(default_factory=SFTOptimConfig)
    eval_every: int = 0                   # held-out NLL every N steps when data.eval is set (0: before and after)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/distill"))


@dataclass
class EvalDataConfig:
    eval: DatasetConfig = field(default_factory=DatasetConfig)
    template: str = "r1_zero"
    assistant_prefix: str = ""
    max_prompt_tokens: int | None = None  # left-truncate longer prompts (grpo.config.DataConfig)


@dataclass
class EvalSamplingConfig:
    backend: str = "hf"                   # "hf" (transformers generate) or "engine" (grpo.engine); eval.* sets the rest


@dataclass
class EvalStageConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("accuracy"), RewardSpec("format")])
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/eval"))


_CLASSES = {"grpo": GRPOConfig, "sft": SFTConfig, "rejection_sampling": RejectionConfig,
            "distill": DistillConfig, "eval": EvalStageConfig}


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _check_optim(o: SFTOptimConfig) -> None:
    _need(o.epochs >= 1, "optim.epochs", f"must be >= 1, got {o.epochs}")
    _need(o.steps >= 0, "optim.steps", f"must be >= 0, got {o.steps}")
    _need(o.micro_batch_size > 0 and o.batch_size % o.micro_batch_size == 0, "optim.batch_size",
          f"must be a positive multiple of micro_batch_size ({o.micro_batch_size}), got {o.batch_size}")
    _need(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    _need(o.schedule in ("constant", "linear", "cosine"), "optim.schedule", f"must be constant | linear | cosine, got {o.schedule!r}")


def validate_stage(kind: str, cfg: Any) -> Any:
    from grpo.data.templates import TEMPLATES

    if kind == "grpo":
        return validate(cfg)
    template = cfg.data.template
    _need(template in TEMPLATES, "data.template", f"must be one of {TEMPLATES}, got {template!r}")
    check_max_prompt_tokens(cfg.data.max_prompt_tokens)
    if kind in ("sft", "distill"):
        _check_optim(cfg.optim)
        _need(cfg.data.max_seq_len > 8, "data.max_seq_len", f"must be > 8, got {cfg.data.max_seq_len}")
    if kind in ("rejection_sampling", "distill", "eval"):
        _need(cfg.sampling.backend in ("hf", "engine"), "sampling.backend",
              f"must be 'hf' or 'engine', got {cfg.sampling.backend!r}")
    if kind in ("rejection_sampling", "distill"):
        _need(cfg.sampling.group_size >= 1, "sampling.group_size", f"must be >= 1, got {cfg.sampling.group_size}")
        _need(cfg.max_per_prompt >= 1, "max_per_prompt", f"must be >= 1, got {cfg.max_per_prompt}")
        _need(len(cfg.rewards) > 0, "rewards", "at least one verifier is needed to filter samples")
    if kind == "rejection_sampling":
        names = {r.name for r in cfg.rewards}
        unknown = set(cfg.accept) - names
        _need(not unknown, "accept", f"names rewards not listed under rewards: {sorted(unknown)}")
    if kind == "distill":
        _need(cfg.mode in ("logit", "sequence"), "mode", f"must be logit | sequence, got {cfg.mode!r}")
        _need(cfg.text in ("teacher", "data"), "text", f"must be teacher | data, got {cfg.text!r}")
        _need(cfg.loss.kind in ("forward", "reverse", "jsd", "ce"), "loss.kind",
              f"must be forward | reverse | jsd | ce, got {cfg.loss.kind!r}")
        _need(0.0 <= cfg.loss.beta <= 1.0, "loss.beta", f"must be in [0, 1], got {cfg.loss.beta}")
        _need(cfg.loss.temperature > 0, "loss.temperature", f"must be > 0, got {cfg.loss.temperature}")
        ft = cfg.student.from_teacher
        _need(not (ft and cfg.student.name), "student", "give either name or from_teacher, not both")
        _need(set(ft) <= {"keep_every", "keep_layers"}, "student.from_teacher",
              f"valid keys: keep_every, keep_layers; got {sorted(ft)}")
    if kind == "eval":
        _need(cfg.eval.num_samples >= 1, "eval.num_samples", f"must be >= 1, got {cfg.eval.num_samples}")
    return cfg


def build_stage(kind: str, tree: dict[str, Any], overrides: list[str] | None = None, path: str = "") -> Any:
    """A validated config of stage `kind` from a recipe tree (without its `stage` key) + overrides."""
    if kind not in _CLASSES:
        raise ConfigError(f"{path + '.' if path else ''}stage: unknown stage '{kind}'; known: {', '.join(STAGE_KINDS)}")
    tree = {k: v for k, v in tree.items() if k not in ("stage", "name")}
    for ov in overrides or []:
        apply_override(tree, ov)
    try:
        return validate_stage(kind, build(_CLASSES[kind], tree))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from e


def run_stage(kind: str, cfg: Any, **kwargs: Any) -> dict[str, Any]:
    module, attr = _RUNNERS[kind].split(":")
    fn = getattr(importlib.import_module(module), attr)
    return fn(cfg, **kwargs)


def output_dir(cfg: Any) -> Path:
    return Path(cfg.run.output_dir)

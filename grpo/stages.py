"""Configuration of the non-GRPO stages (sft, rejection_sampling, distill, eval) and the one dispatch
point `run_stage(kind, cfg)` used by `grpo run` (GRPO included) and the pipeline: it applies the
output-directory policy (grpo.tracking.prepare_output_dir) and the progress settings before the stage.

A recipe with a top-level ``stage:`` key is one of these; a recipe without it is GRPO (grpo.config).
The pieces GRPO already has (ModelConfig, DatasetConfig, SamplingConfig, EvalConfig, RunConfig, reward
specs) are reused, so a key means the same thing in every stage. Each config is validated (types by
`grpo.config.build`, values by `grpo.config.validate`, which runs the checks each class registers with
`@checks`, this module's among them) before any model or dataset is loaded.
"""
from __future__ import annotations

import difflib
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo.config import (ConfigError, DatasetConfig, EvalConfig, GRPOConfig, ModelConfig, Need, RunConfig,
                         SamplingConfig, apply_override, at_least, build, check_adam, check_metric, check_rewards,
                         check_template, checks, one_of, positive, validate)
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


# ---------------------------------------------------------------- value checks (run by grpo.config.validate)

@checks(SFTDataConfig)
def _check_sft_data(d: SFTDataConfig, need: Need) -> None:
    check_template(need, d)
    need(bool(d.completion_key), "completion_key", "must name the Example.meta key holding the target text")
    need(d.max_seq_len > 8, "max_seq_len", f"must be > 8, got {d.max_seq_len}")


@checks(SFTOptimConfig)
def _check_sft_optim(o: SFTOptimConfig, need: Need) -> None:
    at_least(need, o, 1, "epochs")
    at_least(need, o, 0, "steps")
    positive(need, o, "micro_batch_size")
    need(o.batch_size > 0 and o.batch_size % o.micro_batch_size == 0, "batch_size",
         f"must be a positive multiple of micro_batch_size ({o.micro_batch_size}), got {o.batch_size}")
    check_adam(need, o)


def _trains_without_adapters(cfg: Any, need: Need, kind: str, model_key: str = "model") -> None:
    """Keys only the GRPO trainer acts on are errors elsewhere, not silently ignored."""
    m = getattr(cfg, model_key)
    need(not m.adapter, f"{model_key}.adapter", f"the {kind} stage does not convert models (only grpo applies "
         "adapters; a checkpoint saved with adapters loads them by itself)")
    need(not m.cuda_graphs, f"{model_key}.cuda_graphs", f"only the grpo stage replays its update from CUDA graphs, "
         f"not {kind}")


@checks(SFTConfig)
def _check_sft(cfg: SFTConfig, need: Need) -> None:
    _trains_without_adapters(cfg, need, "sft")
    at_least(need, cfg, 0, "eval_every")


@checks(PromptDataConfig)
def _check_prompt_data(d: PromptDataConfig, need: Need) -> None:
    check_template(need, d)


@checks(RejectionConfig)
def _check_rejection(cfg: RejectionConfig, need: Need) -> None:
    _trains_without_adapters(cfg, need, "rejection_sampling")
    at_least(need, cfg, 1, "max_per_prompt")
    labels = check_rewards(cfg.rewards, need)
    for name, threshold in cfg.accept.items():
        close = difflib.get_close_matches(str(name), list(labels), n=1)
        need(name in labels, "accept", f"'{name}' is not one of the rewards ({', '.join(labels)})"
             + (f"; did you mean '{close[0]}'?" if close else ""))
        need(isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold),
             f"accept.{name}", f"must be a number (the minimum reward to keep a sample), got {threshold!r}")


@checks(StudentConfig)
def _check_student(st: StudentConfig, need: Need) -> None:
    ft = st.from_teacher
    need(not (ft and st.name), "", "give either name or from_teacher, not both")
    need(bool(ft or st.name), "", "give name (a model sharing the teacher's tokenizer) or from_teacher: {keep_every: 2}")
    unknown = sorted(set(ft) - {"keep_every", "keep_layers"})
    need(not unknown, "from_teacher", f"valid keys: keep_every, keep_layers; got {unknown}")
    need(len(ft) <= 1, "from_teacher", "give keep_every or keep_layers, not both")
    if "keep_every" in ft:
        v = ft["keep_every"]
        need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, "from_teacher.keep_every",
             f"must be an integer >= 1, got {v!r}")
    if "keep_layers" in ft:
        v = ft["keep_layers"]
        ok = (isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
              and len(set(v)) == len(v))
        need(bool(ok), "from_teacher.keep_layers", f"must be a non-empty list of distinct layer indices >= 0, got {v!r}")


@checks(DistillLossConfig)
def _check_distill_loss(lc: DistillLossConfig, need: Need) -> None:
    one_of(need, lc, "kind", ("forward", "reverse", "jsd", "ce"))
    need(0.0 <= lc.beta <= 1.0, "beta", f"must be in [0, 1], got {lc.beta}")
    positive(need, lc, "temperature")


@checks(DistillConfig)
def _check_distill(cfg: DistillConfig, need: Need) -> None:
    _trains_without_adapters(cfg, need, "distill", "teacher")
    one_of(need, cfg, "mode", ("logit", "sequence"))
    one_of(need, cfg, "text", ("teacher", "data"))
    at_least(need, cfg, 1, "max_per_prompt")
    at_least(need, cfg, 0, "eval_every")
    check_rewards(cfg.rewards, need)


@checks(EvalDataConfig)
def _check_eval_data(d: EvalDataConfig, need: Need) -> None:
    check_template(need, d)


@checks(EvalSamplingConfig)
def _check_eval_sampling(s: EvalSamplingConfig, need: Need) -> None:
    one_of(need, s, "backend", ("hf", "engine"))


@checks(EvalStageConfig)
def _check_eval_stage(cfg: EvalStageConfig, need: Need) -> None:
    _trains_without_adapters(cfg, need, "eval")
    # no rewards besides the metric is fine: the evaluation adds the metric's reward
    check_metric(cfg.eval.metric, check_rewards(cfg.rewards, need, required=False), need)


def build_stage(kind: str, tree: dict[str, Any], overrides: list[str] | None = None, path: str = "") -> Any:
    """A validated config of stage `kind` from a recipe tree (without its `stage` key) + overrides."""
    if kind not in _CLASSES:
        raise ConfigError(f"{path + '.' if path else ''}stage: unknown stage '{kind}'; known: {', '.join(STAGE_KINDS)}")
    tree = {k: v for k, v in tree.items() if k != "stage"}
    for ov in overrides or []:
        apply_override(tree, ov)
    try:
        return validate(build(_CLASSES[kind], tree))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from e


def run_stage(kind: str, cfg: Any, resume_from: str | None = None, overwrite: bool = False,
              **kwargs: Any) -> dict[str, Any]:
    """Run one validated stage: first its output directory (grpo.tracking.prepare_output_dir: a file, an
    unwritable place, or a finished run there without --resume / --overwrite are errors; --resume needs a
    checkpoint) and progress settings, then the stage itself. Everything here is checked before any
    model loads. `kwargs` go to the stage's runner (tests pass `model` / `tokenizer`)."""
    from grpo.tracking import configure_progress, prepare_output_dir

    if resume_from and kind != "grpo":
        raise ConfigError(f"--resume works for GRPO runs only, not stage '{kind}'")
    prepare_output_dir(cfg.run.output_dir, resume_from=resume_from, overwrite=overwrite)
    configure_progress(cfg.run.progress)
    module, attr = _RUNNERS[kind].split(":")
    fn = getattr(importlib.import_module(module), attr)
    if resume_from:
        kwargs["resume_from"] = resume_from
    return fn(cfg, **kwargs)


def output_dir(cfg: Any) -> Path:
    return Path(cfg.run.output_dir)

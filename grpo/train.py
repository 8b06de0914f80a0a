"""The GRPO training loop, top to bottom: sample -> score -> advantages -> clipped policy update.

Variant (see grpo/algorithms.py for the formulas): DeepSeekMath/R1 GRPO with outcome rewards, group-
relative advantages, PPO-style ratio clipping with separate low/high epsilons (DAPO clip-higher),
optional k3 KL to a frozen reference (kl_coef = 0 loads no reference), mu = `num_iterations` updates per
rollout batch with the old policy's log-probs fixed at sampling time, and the loss normalisation chosen
by `loss_type`. One outer step = one rollout batch of `prompts_per_step` prompts x G completions.

Distribution: each accelerate process samples G completions for its own shard of the step's prompts,
so every group lives on one process and group statistics equal single-process training; token and
sequence counts for the loss normalisation are reduced across processes.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from grpo.data.records import Example
from grpo.data.templates import is_conversational
from grpo import checkpoint as ckpt
from grpo.algorithms import group_advantages, normalize_loss, per_token_loss, zero_std_fraction
from grpo.config import ConfigError, GRPOConfig, save_config, to_dict
from grpo.evaluate import EvalResult, evaluate
from grpo.logprobs import PackedBatch, pack, token_logprobs
from grpo.memory import Limits, free_device_bytes, auto_token_limit, halve, is_out_of_memory, plan_micro_batches
from grpo.models import compile_blocks, frozen_copy, load_model, load_tokenizer
from grpo.rollout import RolloutBatch, SamplingParams, check_prompts, encode_prompts, make_sampler
from grpo.scoring import score_rollout
from grpo.tracking import RunWriter, available_trackers, gather_rows, progress, run_report, truncate_jsonl
from grpo.rewards.registry import LoadedReward, RewardError, RewardTable, load_rewards

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    cfg: GRPOConfig
    accelerator: Any
    model: Any
    ref_model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: Any
    rewards: list[LoadedReward]
    train_examples: list[Example]
    eval_examples: list[Example] | None
    writer: RunWriter
    step: int = 0
    cursor: int = 0                       # position in the current epoch's order
    epoch: int = 0
    order: list[int] = field(default_factory=list)
    update_graphs: Any = None             # grpo.graphed.GraphedLogprobs when model.cuda_graphs applies
    adapted_cache: Any = None             # (model, _adapted(state)) for the model object it was found on
    micro_limits: Limits | None = None    # micro-batch limits in force: set at the first update, halved on OOM
    scratch: Any = None                   # () -> the sampler's idle KV cache as one flat buffer, or None
    quiet_steps: int = 0                  # steps in a row without learning signal (_watch_signal)
    warned: set[str] = field(default_factory=set)   # one-time warnings already given


@dataclass
class StepStats:
    """Everything one step logs; written as one line of metrics.jsonl."""

    step: int
    reward_mean: float
    reward_std: float
    rewards: dict[str, float]             # per-function mean over applicable samples ("<name>" and "<name>_std")
    zero_std_frac: float
    completion_len_mean: float
    completion_len_max: float
    truncated_frac: float
    loss: float
    kl: float
    entropy: float
    clip_low: float
    clip_high: float
    grad_norm: float
    lr: float
    step_seconds: float
    gen_seconds: float
    gen_tokens_per_s: float
    unscored_frac: float = 0.0            # rows no reward scored (None from every reward): left out of the loss
    reward_seconds: float = 0.0           # scoring the rollout (CPU: verifiers, sandbox)
    update_seconds: float = 0.0           # log-probs, backward and optimizer step(s)
    extra: dict[str, float] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k not in ("rewards", "extra")}
        row.update({f"reward/{k}": v for k, v in self.rewards.items()})
        row.update(self.extra)
        return row


# ---------------------------------------------------------------- setup

def load_datasets(cfg: GRPOConfig) -> tuple[list[Example], list[Example] | None]:
    """Training and held-out Examples. Held-out prompts that also occur in the training data are dropped
    before the held-out `limit` is applied, so the evaluation really has `limit` unseen prompts."""
    t = cfg.data.train
    train = t.load()
    e = cfg.data.eval
    if e is None:
        return train, None
    held = replace(e, limit=None).load()  # the limit applies after dropping prompts seen in training
    seen = {x.prompt for x in train}
    unseen = [x for x in held if x.prompt not in seen]
    if len(unseen) < len(held):
        log.info("held-out set: dropped %d prompts that also occur in the training data", len(held) - len(unseen))
    if not unseen:
        raise ConfigError("data.eval: every held-out prompt also occurs in the training data")
    if e.limit is not None and len(unseen) < e.limit:
        log.warning("held-out set has only %d unseen prompts (data.eval.limit = %d)", len(unseen), e.limit)
    return train, unseen[:e.limit] if e.limit is not None else unseen


def check_reward_columns(rewards: list[LoadedReward], examples: list[Example]) -> None:
    """A reward that needs a dataset column the data does not provide fails before any model loads."""
    import inspect

    from grpo.data.records import reward_columns

    have = set(reward_columns(examples[:1])) | {"prompts", "completions", "completion_ids"}
    for r in rewards:
        try:
            sig = inspect.signature(r.fn)
        except (TypeError, ValueError):
            continue
        for name, p in sig.parameters.items():
            required = p.default is inspect.Parameter.empty and p.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            if required and name not in have and name not in r.call_kwargs:
                raise ConfigError(f"reward '{r.label}' needs the dataset column '{name}', which the training "
                                  f"data does not have (columns: {', '.join(sorted(have))})")


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AMX or AVX512-BF16): there bf16 autocast makes the
    update ~5x faster than fp32; elsewhere bf16 on CPU is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(setting: str) -> str:
    """"auto": bf16 autocast on CUDA and on CPUs with native bf16, fp32 ("no") elsewhere."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() or cpu_has_native_bf16() else "no"


def sampling_context(acc):
    """Autocast for sampling on CUDA only: on CPU, autocast re-casts every weight at each decode step,
    which makes token-by-token generation slower than fp32."""
    return acc.autocast() if acc.device.type == "cuda" else contextlib.nullcontext()


def make_accelerator(cfg: GRPOConfig):
    from accelerate import Accelerator

    mp = resolve_precision(cfg.run.mixed_precision)
    trackers = available_trackers(cfg.run.trackers)
    # step_scheduler_with_optimizer=False: accelerate would otherwise step the LR schedule num_processes
    # times per optimizer step (it assumes the per-process batch is fixed); our global batch is fixed.
    acc = Accelerator(mixed_precision=mp, log_with=trackers or None, project_dir=cfg.run.output_dir,
                      step_scheduler_with_optimizer=False)
    if trackers:
        acc.init_trackers(Path(cfg.run.output_dir).name, config=_flat(to_dict(cfg)))
    return acc


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def make_scheduler(optimizer, cfg: GRPOConfig):
    o = cfg.optim
    total = o.steps * cfg.algorithm.num_iterations

    def factor(i: int) -> float:
        if o.warmup_steps and i < o.warmup_steps:
            return (i + 1) / o.warmup_steps
        progress_ = (i - o.warmup_steps) / max(1, total - o.warmup_steps)
        if o.schedule == "linear":
            return max(0.0, 1.0 - progress_)
        if o.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def setup(cfg: GRPOConfig, model=None, tokenizer=None) -> TrainState:
    """Everything cheap and checkable first (rewards, data), then the model. `model`/`tokenizer` may be
    passed in (tests, benchmarks) instead of loading `cfg.model.name`."""
    rewards = load_rewards(cfg.rewards)
    train, held = load_datasets(cfg)
    check_reward_columns(rewards, train)
    # On CPU, denormal floats (tiny Adam moments, far-tail softmax terms) take a slow microcode path:
    # the quickstart's backward once stalled for minutes in an elementwise kernel. Flush them to zero.
    torch.set_flush_denormal(True)
    _seed_everything(cfg.run.seed)
    acc = make_accelerator(cfg)
    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    elif acc.device.type == "cuda":
        # On a GPU the host only builds small tensors and runs the verifiers, and torch's default (a thread
        # per core) made both slower: on the H100 std-step one traced step took 0.596 s with 1 thread and
        # 0.691 s with 16 (rewards 0.039 vs 0.093 s; tools/step_trace.py, STEP_TRACE_THREADS=1,
        # 2026-11-24). Likely cause: OpenMP workers spinning after each parallel region, taking the cores
        # the verifiers' helper process and the tokenizer need.
        torch.set_num_threads(1)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model.name)
    check_prompts_fit(cfg, model, tokenizer, train, held)
    if model is None:
        model = load_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.adapter:
        from grpo.adapters import BiasCalibration, apply_adapters

        # MoE bias calibration (moe.calibrate_bias_steps): the first 64 training prompts and one rollout-style
        # continuation of each; MLA keeps its weight-only init here
        first_prompts = encode_prompts(tokenizer, train[:64], cfg.data.template, cfg.data.assistant_prefix,
                                       cfg.data.max_prompt_tokens)[1]
        sp = cfg.sampling
        calib = BiasCalibration(
            first_prompts, tokenizer,
            SamplingParams(max_new_tokens=sp.max_new_tokens, temperature=sp.temperature, top_p=sp.top_p,
                           top_k=sp.top_k))
        model = apply_adapters(model, cfg.model.adapter, moe_calibration=calib)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = frozen_copy(model) if cfg.algorithm.kl_coef > 0 else None
    if cfg.model.compile:
        compile_blocks(model)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    scheduler = make_scheduler(optimizer, cfg)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    if ref is not None:
        ref = ref.to(acc.device)
    # the sampler gets the bare model: accelerate's autocast wrapper on forward would make CPU decoding slow
    unwrapped = acc.unwrap_model(model, keep_fp32_wrapper=False)
    # the engine on a bf16-capable CPU decodes from bf16 shadow weights (measured 2.4x the HF fp32 sampler
    # on SmolLM2, 64 rows x 48 tokens); "auto" keeps bf16 on CUDA and the weights' dtype elsewhere
    engine_dtype = (torch.bfloat16 if acc.device.type == "cpu" and resolve_precision(cfg.run.mixed_precision) == "bf16"
                    else "auto")
    sampler = make_sampler(cfg.sampling.backend, unwrapped, tokenizer, cfg.sampling.batch_size, dtype=engine_dtype)
    writer = RunWriter(cfg.run.output_dir, enabled=acc.is_main_process, accelerator=acc)
    state = TrainState(cfg, acc, model, ref, tokenizer, optimizer, scheduler, sampler, rewards, train, held, writer)
    state.order = _epoch_order(len(train), cfg.run.seed, 0)
    state.scratch = getattr(sampler, "scratch", None)  # EngineSampler: its KV cache, dead during the update
    if cfg.model.cuda_graphs:
        from grpo.graphed import GraphedLogprobs

        why = GraphedLogprobs.usable(model, acc.num_processes)
        if why is None:
            # gradient checkpoints go to the engine's KV cache while it is idle (EngineSampler.scratch)
            state.update_graphs = GraphedLogprobs(model, cfg.sampling.temperature, compile_head=cfg.model.compile,
                                                  scratch=state.scratch)
        else:
            warnings.warn(f"model.cuda_graphs: the update runs without CUDA graphs: {why}")
    return state


def make_optimizer(params: list, cfg: GRPOConfig) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA), or with `optim.optimizer: adamw_8bit` torchao's AdamW8bit: both moments in 8 bits
    with a scale per block of 256 (2 bytes per parameter instead of 8 with fp32 weights, 4 with bf16), each
    parameter's step compiled once per shape (torch.compile; the first step is slow)."""
    o = cfg.optim
    kw = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.optimizer == "adamw_8bit":
        try:
            from torchao.optim import AdamW8bit
        except ImportError as e:
            raise ConfigError("optim.optimizer: adamw_8bit needs the torchao package (pip install torchao)") from e
        return AdamW8bit(params, **kw)
    return torch.optim.AdamW(params, **kw, **({"fused": True} if _fused_optimizer() else {}))


def check_prompts_fit(cfg: GRPOConfig, model, tokenizer, train: list[Example], held: list[Example] | None) -> None:
    """The prompt-length policy (`grpo.rollout.check_prompt_lengths`) on the training prompts and, when they are
    evaluated, the held-out ones, before the model loads (`model`: one passed in, else None)."""
    check_prompts(cfg.model, model, tokenizer, train, cfg.data, cfg.sampling.max_new_tokens, "data.train")
    if held and (cfg.eval.before or cfg.eval.after or cfg.eval.every):
        check_prompts(cfg.model, model, tokenizer, held, cfg.data, cfg.eval.max_new_tokens, "data.eval")


def _fused_optimizer() -> bool:
    """Fused AdamW (one multi-tensor kernel per step) on CUDA; torch's default implementation elsewhere."""
    return torch.cuda.is_available()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 100003 + epoch).shuffle(order)
    return order


# ---------------------------------------------------------------- one step

def next_prompts(state: TrainState) -> list[Example]:
    """This process's prompts for the next step (the global batch is sharded across processes)."""
    acc, b = state.accelerator, state.cfg.optim.prompts_per_step
    picked = []
    for _ in range(b):
        if state.cursor >= len(state.order):
            state.epoch += 1
            state.cursor = 0
            state.order = _epoch_order(len(state.train_examples), state.cfg.run.seed, state.epoch)
        picked.append(state.train_examples[state.order[state.cursor]])
        state.cursor += 1
    return picked[acc.process_index::acc.num_processes]


def sample(state: TrainState, examples: list[Example]) -> tuple[list[list[dict]], RolloutBatch]:
    s = state.cfg.sampling
    chats, prompt_ids = encode_prompts(state.tokenizer, examples, state.cfg.data.template,
                                       state.cfg.data.assistant_prefix, state.cfg.data.max_prompt_tokens)
    params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
    with torch.no_grad(), sampling_context(state.accelerator), _record_routes(state) as rec:
        try:
            rollout = state.sampler.generate(prompt_ids, s.group_size, params)
        except RuntimeError as e:
            if "inf" not in str(e) and "nan" not in str(e):
                raise
            raise FloatingPointError(f"step {state.step + 1}: the model produced non-finite probabilities while "
                                     f"sampling ({e})") from e
    rollout.routes = rec[0] if rec else None
    return chats, rollout


# MoE adapter hooks (grpo/adapters): every helper is a no-op for models without adapters.

def _adapted(state: TrainState):
    """The bare policy if it carries MLA/MoE adapters (converted by this recipe's model.adapter, or a saved
    converted checkpoint given as model.name), else None. Looked up once per model object: accelerate's
    unwrap_model walks every module (1-3 ms on the GPU host) and the step asks up to four times."""
    cached = state.adapted_cache
    if cached is None or cached[0] is not state.model:
        bare = state.accelerator.unwrap_model(state.model)
        cached = state.adapted_cache = (state.model, bare if getattr(getattr(bare, "config", None), "adapter", None)
                                        else None)
    return cached[1]


def _record_routes(state: TrainState):
    """Context that records the MoE experts chosen while sampling (routing replay); yields a list that holds
    one RecordedRoutes afterwards, or [] when replay is off."""
    model = _adapted(state)
    if model is None:
        return contextlib.nullcontext([])
    from grpo.adapters import routing_replay, routing_replay_enabled

    return routing_replay(model, "record") if routing_replay_enabled(model) else contextlib.nullcontext([])


def _replayer(state: TrainState, routes):
    """rows -> context in which the policy's forwards (and their recomputation in backward) route the rows'
    tokens to the experts recorded at rollout; a null context when nothing was recorded."""
    if routes is None:
        return lambda rows: contextlib.nullcontext()
    from grpo.adapters import routing_replay

    model = _adapted(state)
    return lambda rows: routing_replay(model, "replay", routes.select(rows))


def _aux_loss(state: TrainState, num_micro: int):
    """MoE balance loss of the forward just run, scaled like the policy loss (mean over the step's
    micro-batches, DDP's average over processes undone); 0.0 when off."""
    if _adapted(state) is None:
        return 0.0
    from grpo.adapters import aux_loss

    return aux_loss(_adapted(state)) * state.accelerator.num_processes / num_micro


def _micro_limits(state: TrainState, prompt_lens: torch.Tensor) -> Limits:
    """The update's micro-batch limits: `optim.micro_batch_size` rows and `optim.micro_batch_tokens` tokens,
    "auto" resolved from the device memory free now (CUDA; no token limit elsewhere) less what the first
    optimizer step will still allocate (gradients, AdamW moments), over grpo.shapes' estimate of the
    update's bytes per token at the longest prompt + max_new_tokens."""
    o = state.cfg.optim
    if o.micro_batch_tokens != "auto":
        return Limits(o.micro_batch_size, o.micro_batch_tokens)
    free = free_device_bytes(state.accelerator.device)
    if free is None:
        return Limits(o.micro_batch_size, 0)
    from grpo.shapes import Shape, head_chunk_bytes, update_bytes_per_token

    bare = state.accelerator.unwrap_model(state.model)
    try:
        shape = Shape.from_hf_config(bare.config)
    except ValueError:
        return Limits(o.micro_batch_size, 0)
    params = [p for p in bare.parameters() if p.requires_grad]
    pending = sum(p.numel() * p.element_size() for p in params if p.grad is None)
    if not state.optimizer.state:  # AdamW's two moments appear at the first step
        pending += 2 * sum(p.numel() * p.element_size() for p in params)
    context = int(prompt_lens.max()) + state.cfg.sampling.max_new_tokens
    elem = 2 if resolve_precision(state.cfg.run.mixed_precision) == "bf16" or params[0].element_size() == 2 else 4
    per_token = update_bytes_per_token(shape, context, state.cfg.model.gradient_checkpointing, elem)
    tokens = auto_token_limit(free, per_token, pending + head_chunk_bytes(shape))
    log.info("micro-batches: at most %d rows and %d tokens (auto: %.1f GiB free, ~%.0f KiB per token)",
             o.micro_batch_size, tokens, free / 2**30, per_token / 2**10)
    return Limits(o.micro_batch_size, tokens)


def _after_oom(state: TrainState, exc: BaseException, micro: list[torch.Tensor], lengths: torch.Tensor,
               prompt_lens: torch.Tensor) -> Limits | None:
    """The halved limits to run the update again with after `exc`, or None: not an out-of-memory error,
    `optim.oom_retry` off, several processes (one alone cannot change its micro-batches: the others
    would wait for it in the gradient all-reduce), or micro-batches already one row."""
    if not (state.cfg.optim.oom_retry and is_out_of_memory(exc)):
        return None
    if state.accelerator.num_processes > 1:
        log.error("out of memory in the policy update; with several processes it is not retried: set "
                  "optim.micro_batch_tokens (now %s) or optim.micro_batch_size lower", state.micro_limits)
        return None
    return halve(micro, lengths, prompt_lens, state.micro_limits)


def _free_after_oom(state: TrainState) -> None:
    """Zero what the failed attempt accumulated and give its memory back (the exception is gone by now)."""
    state.optimizer.zero_grad(set_to_none=state.update_graphs is None)
    if state.update_graphs is not None:
        state.update_graphs.forget()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def _logprobs_no_grad(model, batch: PackedBatch, micro: list[torch.Tensor], temperature: float, acc,
                      replay=lambda rows: contextlib.nullcontext(), compile_head: bool = False) -> torch.Tensor:
    out = torch.zeros(batch.completion_ids.shape, device=acc.device)
    for idx in micro:
        sub = batch.rows(idx).to(acc.device)
        with acc.autocast(), replay(idx):
            lp, _ = token_logprobs(model, sub, temperature, compile_head=compile_head)
        out[idx.to(acc.device), :lp.shape[1]] = lp.float()
    return out


def policy_update(state: TrainState, rollout: RolloutBatch, advantages) -> dict[str, float]:
    """mu optimizer steps on one rollout batch; returns averaged diagnostics. `advantages`: [N], or a pair
    ([N] advantages, [N] bool rows that some reward scored), or a function that returns either: it is called
    once, when the first micro-batch's loss needs them (its forward pass is queued by then, so scoring on the
    CPU overlaps it). Rows no reward scored are masked out of the loss and are not counted by its
    normalisers, as if they had not been sampled (rows masked by mask_truncated still count as sequences,
    as in TRL).

    Micro-batches follow `state.micro_limits` (grpo.memory). An out-of-memory error in a forward or backward
    pass zeroes the gradients, halves the limits (for this and every later step) and runs that pass again
    from its start: each optimizer step applies gradients of completed micro-batches only."""
    cfg, acc, model = state.cfg, state.accelerator, state.model
    a = cfg.algorithm
    pad = state.tokenizer.pad_token_id
    mask = rollout.completion_mask.clone()
    if a.mask_truncated:
        mask[rollout.truncated] = 0
    batch = pack(rollout.prompt_ids, rollout.completion_ids, mask, pad)
    lengths = mask.sum(dim=1)
    prompt_lens = torch.tensor([len(p) for p in rollout.prompt_ids])
    if state.micro_limits is None:
        state.micro_limits = _micro_limits(state, prompt_lens)
    micro = [plan_micro_batches(lengths, prompt_lens, state.micro_limits, rollout.group)]
    retries = [0]

    def retried(run: Callable[[list[torch.Tensor]], Any]) -> Any:
        """run(micro-batches), run again with halved micro-batches after each out-of-memory error."""
        while True:
            try:
                return run(micro[0])
            except Exception as e:  # noqa: BLE001 - anything but an OOM (or one not to retry) is raised again
                smaller = _after_oom(state, e, micro[0], lengths, prompt_lens)
                if smaller is None:
                    raise
            # out of the except block: the exception and the tensors its frames held are gone
            _free_after_oom(state)
            warnings.warn(f"step {state.step + 1}: out of memory in the policy update with micro-batches of up "
                          f"to {state.micro_limits.rows} rows / {state.micro_limits.tokens or 'any'} tokens; "
                          f"running it again with {smaller.rows} rows / {smaller.tokens or 'any'} tokens")
            state.micro_limits = smaller
            micro[0] = plan_micro_batches(lengths, prompt_lens, smaller, rollout.group)
            retries[0] += 1

    temp = cfg.sampling.temperature
    replay = _replayer(state, rollout.routes)  # MoE routing replay: the rollout's experts, rows by rows
    compiled = cfg.model.compile
    old = (retried(lambda m: _logprobs_no_grad(model, batch, m, temp, acc, replay, compiled))
           if a.num_iterations > 1 else None)
    # the reference routes on its own (its own router and bias; the deepcopy has its own routing state)
    ref = (retried(lambda m: _logprobs_no_grad(state.ref_model, batch, m, temp, acc, compile_head=compiled))
           if state.ref_model is not None else None)
    # the loss normalisers; adv() adds the global sequence and token counts of the scored rows
    norm: dict[str, Any] = {"max_completion_length": cfg.sampling.max_new_tokens}
    resolved: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def adv() -> tuple[torch.Tensor, torch.Tensor | None]:
        """(advantages [N], scored rows [N] or None: all) on the device; fills in the global normalisers."""
        if not resolved:
            got = advantages() if callable(advantages) else advantages
            values, rows_in = got if isinstance(got, tuple) else (got, None)
            kept = mask if rows_in is None else mask * rows_in.unsqueeze(1)
            counts = _gathered(acc, torch.tensor([[float(len(rollout.group) if rows_in is None else rows_in.sum()),
                                                   float(kept.sum())]])).sum(0)  # sums over processes
            norm.update(global_seqs=int(counts[0]), global_tokens=float(counts[1]))
            # no sync: the loss and backward get queued behind the forward pass while it runs
            resolved.append((_to_device(values, acc.device),
                             None if rows_in is None else _to_device(rows_in.float(), acc.device)))
        return resolved[0]

    agg: dict[str, list[float]] = {}
    first_micro = 0
    for it in range(a.num_iterations):
        def iteration(parts: list[torch.Tensor]) -> dict[str, list]:
            norm["num_micro_batches"] = len(parts)
            out: dict[str, list] = {}
            for idx in parts:
                with replay(idx):  # open through backward: gradient checkpointing recomputes the forward there
                    _micro_step(state, batch.rows(idx), idx.to(acc.device), it, old, ref, adv, norm, out)
            return out

        for k, v in retried(iteration).items():
            agg.setdefault(k, []).extend(v)
        first_micro = first_micro or len(agg["_w"])
        grad_norm = _optimizer_step(state, agg, len(micro[0]))
    _to_host(agg)
    w_all = agg.pop("_w")
    w = max(sum(w_all), 1.0)
    w_iter = max(sum(w_all[:first_micro]), 1.0)
    out = {"loss": sum(agg["loss"]) / a.num_iterations, "grad_norm": float(grad_norm),
           "ratio_first": sum(agg.pop("_ratio0")) / w_iter,
           "ratio_last": sum(agg.pop(f"_ratio{a.num_iterations - 1}", [w_iter])) / w_iter}
    for k in ("clip_low", "clip_high", "kl", "ratio"):
        out[k] = sum(agg[k]) / (w)
    out["entropy"] = sum(agg.get("entropy", [0.0])) / max(float(mask.sum()), 1.0)
    if "aux_loss" in agg:
        out["aux_loss"] = sum(agg["aux_loss"]) / a.num_iterations
    out.update(oom_retries=retries[0], micro_batches=len(micro[0]), micro_batch_tokens=state.micro_limits.tokens)
    return out


def _checkpoints_in_scratch(state: TrainState):
    """The eager update's gradient checkpoints kept in the sampler's idle KV cache, as the graphed update
    keeps them (grpo.graphed.checkpoints_in: layer inputs of the cache's dtype, while room is left); a null
    context without gradient checkpointing or such a cache."""
    arena = state.scratch() if state.scratch is not None and state.cfg.model.gradient_checkpointing else None
    if arena is None:
        return contextlib.nullcontext()
    from grpo.graphed import checkpoints_in

    base = getattr(state.model, "module", state.model)
    return checkpoints_in(getattr(base.get_decoder(), "layers", []), arena)


def _micro_step(state: TrainState, rows: PackedBatch, didx: torch.Tensor, it: int, old, ref,
                adv: Callable[[], tuple], norm: dict, agg: dict[str, list]) -> None:
    """Forward + backward of one micro-batch (`rows`, on the host; rows `didx` of the step's batch); appends
    its diagnostics to `agg` as device tensors (read once per step, `_to_host`: no sync here, so the host
    queues the optimizer step while the device is still in backward). `adv()` gives the advantages [N] on
    the device and the scored rows [N] (None: all); it is called after the forward pass is queued."""
    a, acc, model = state.cfg.algorithm, state.accelerator, state.model
    scale = acc.num_processes  # DDP averages gradients over processes; the normalisers are global sums
    w = float(rows.completion_mask.sum())  # on the host copy
    t = rows.completion_ids.shape[1]
    # moved before any forward is queued: a copy from pageable host memory waits for the stream's work
    mask = rows.completion_mask.to(acc.device)
    with acc.autocast():
        # the graphs take the host batch (their layout is built on the host and moved once)
        graphed = state.update_graphs(rows) if state.update_graphs is not None else None
        if graphed is not None:  # entropies come with the graphs' outputs; logged for the first iteration
            logp, ent = graphed[0], (graphed[1] if it == 0 else None)
        else:  # the mask already moved: one copy of it
            sub = replace(rows, completion_mask=mask).to(acc.device)
            with _checkpoints_in_scratch(state):
                logp, ent = token_logprobs(model, sub, state.cfg.sampling.temperature, with_entropy=(it == 0),
                                           compile_head=state.cfg.model.compile)
    aux = _aux_loss(state, norm["num_micro_batches"])
    logp = logp.float()
    old_lp = old[didx, :t] if old is not None else logp.detach()
    ref_lp = ref[didx, :t] if ref is not None else None
    values, rows_in = adv()
    loss_mask = mask if rows_in is None else mask * rows_in[didx].unsqueeze(1)  # unscored rows leave the loss
    per_tok, st = per_token_loss(logp, old_lp, values[didx], loss_mask, a.clip_eps_low,
                                 a.clip_eps_high, a.kl_coef, ref_lp, as_tensors=True)
    loss = normalize_loss(per_tok, loss_mask, a.loss_type, **norm) * scale
    if not loss.requires_grad:  # no loss tokens in this micro-batch (e.g. all masked as truncated):
        # a zero that touches every parameter keeps backward, and DDP's gradient sync, in step
        loss = loss + 0.0 * sum(p.view(-1)[0] for p in model.parameters() if p.requires_grad)
    acc.backward(loss + aux if torch.is_tensor(aux) else loss)
    for k, v in (("loss", loss.detach() / scale), ("clip_low", st.clip_low), ("clip_high", st.clip_high),
                 ("kl", st.kl), ("ratio", st.ratio_mean)):
        agg.setdefault(k, []).append(v if k == "loss" else v * w)
    agg.setdefault(f"_ratio{it}", []).append(st.ratio_mean * w)
    agg.setdefault("_w", []).append(w)
    if ent is not None:
        agg.setdefault("entropy", []).append((ent.detach() * mask).sum())
    if torch.is_tensor(aux):
        agg.setdefault("aux_loss", []).append(aux.detach() / scale)


def _to_host(agg: dict[str, list]) -> dict[str, list]:
    """Replace the 0-dim tensors in `agg`'s lists by floats, read in one device-to-host copy."""
    where = [(k, i) for k, vals in agg.items() for i, v in enumerate(vals) if torch.is_tensor(v)]
    if where:
        flat = torch.stack([agg[k][i].detach().float().reshape(()) for k, i in where]).tolist()
        for (k, i), f in zip(where, flat):
            agg[k][i] = f
    return agg


def _optimizer_step(state: TrainState, agg: dict[str, list[float]], num_micro: int):
    """Clip, check, step (optimizer, LR schedule, MoE bias); returns the gradient norm."""
    cfg, acc, model = state.cfg, state.accelerator, state.model
    grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
    guard = _guard_on_device(state, grad_norm)
    # DeepSpeed returns None: it clips inside its own step (`gradient_clipping` in its config) and reports
    # the norm only afterwards, so there the check below runs after the step
    if grad_norm is not None and guard is None:  # the norm is of the all-reduced grads: every process agrees
        _check_finite_grad_norm(state, agg, num_micro, float(grad_norm), "before the optimizer step")
    state.optimizer.step()
    # the update's CUDA graphs add into the .grad tensors they were captured with: zero those in place
    state.optimizer.zero_grad(set_to_none=state.update_graphs is None)
    if guard is not None:  # read only now: the host queued the step without waiting for the backward pass
        guard.found_inf = None
        _check_finite_grad_norm(state, agg, num_micro, float(grad_norm),
                                "at the optimizer step, which skipped its update on the device (no weight changed)")
    state.scheduler.step()
    adapted = _adapted(state)
    if adapted is not None:
        from grpo.adapters import after_optimizer_step

        after_optimizer_step(adapted)
    if grad_norm is None:
        reported = getattr(model, "get_global_grad_norm", lambda: None)()
        if reported is None:
            return float("nan")  # unknown: logged as NaN, not treated as a failure
        _check_finite_grad_norm(state, agg, num_micro, float(reported), "after DeepSpeed's optimizer step")
        return float(reported)
    return grad_norm


def _guard_on_device(state: TrainState, grad_norm):
    """The fused torch Adam/AdamW under `state.optimizer`, told to skip its update on the device when
    `grad_norm` is not finite (its `found_inf` input, as GradScaler uses it: parameters, moments and step
    counts stay as they were), or None where that does not apply (no fused optimizer, a GradScaler that
    sets found_inf itself, DeepSpeed's None norm): the host then checks the norm before the step."""
    inner = getattr(state.optimizer, "optimizer", state.optimizer)
    if (not torch.is_tensor(grad_norm) or not isinstance(inner, torch.optim.Adam | torch.optim.AdamW)
            or not inner.defaults.get("fused") or getattr(state.accelerator, "scaler", None) is not None):
        return None
    norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP2: a DTensor
    if norm.device != inner.param_groups[0]["params"][0].device:
        return None
    inner.found_inf = (~torch.isfinite(norm.detach())).float().reshape(())
    return inner


def _check_finite_grad_norm(state: TrainState, agg: dict[str, list], num_micro: int, norm: float,
                            when: str) -> None:
    if math.isfinite(norm):
        return
    losses = [float(x) for x in agg["loss"][-num_micro:]]
    cause = "loss" if not all(math.isfinite(x) for x in losses) else "gradients"
    raise FloatingPointError(f"step {state.step + 1}: non-finite {cause} (loss {sum(losses)}, gradient norm "
                             f"{norm}); stopped {when}, no checkpoint written")


def reward_stats(table: RewardTable) -> dict[str, float]:
    """Per reward: mean and std over the samples it scored ("<name>", "<name>_std"), the share it left
    None ("<name>/none_frac") and how many of those were failures ("<name>/errors", on_error: none)."""
    n = max(len(table.values), 1)
    out = {}
    for j, name in enumerate(table.names):
        vals = [row[j] for row in table.values if row[j] is not None]
        if vals:
            t = torch.tensor(vals)
            out[name] = float(t.mean())
            out[f"{name}_std"] = float(t.std()) if len(vals) > 1 else 0.0
        out[f"{name}/none_frac"] = 1.0 - len(vals) / n
        out[f"{name}/errors"] = float(table.errors[j]) if table.errors else 0.0
    return out


def _watch_signal(state: TrainState, table: RewardTable, stats: StepStats) -> None:
    """Loud warnings (main process) when the rewards carry no learning signal: a reward that gave its whole
    first batch one value, rows that no reward scores, and `run.no_signal_warn_steps` steps in a row in
    which no group could tell its completions apart (every advantage 0: the policy-gradient loss is 0)."""
    cfg = state.cfg
    state.quiet_steps = state.quiet_steps + 1 if stats.zero_std_frac >= 1.0 else 0
    if not state.accelerator.is_main_process:
        return
    form = ("chat messages [{'role': 'assistant', 'content': ...}]" if is_conversational(cfg.data.template)
            else "plain strings")
    constant = table.constant_columns() if "first batch" not in state.warned else {}
    state.warned.add("first batch")
    if constant:
        log.warning("reward %s gave every completion of the first batch (%d) the same value: it carries no "
                    "learning signal there. If it should vary, check that it reads completions as %s "
                    "(data.template: %s).", ", ".join(f"'{k}' = {v:g}" for k, v in constant.items()),
                    len(table.values), form, cfg.data.template)
    if stats.unscored_frac > 0 and "unscored" not in state.warned:
        state.warned.add("unscored")
        log.warning("step %d: %.0f%% of the completions got None from every reward; they are left out of the "
                    "loss (metric unscored_frac). Does a reward cover every task in the data?",
                    stats.step, 100 * stats.unscored_frac)
    n = cfg.run.no_signal_warn_steps
    if n and state.quiet_steps and state.quiet_steps % n == 0:
        flat = [k for k in table.names if stats.rewards.get(f"{k}_std", 0.0) == 0.0]
        log.warning(
            "NO LEARNING SIGNAL for %d steps in a row (to step %d): in every group the rewards were equal, or fewer "
            "than 2 completions were scored, so every advantage is 0 and the policy-gradient loss is 0%s. Check: "
            "is a reward constant (reward/<name>_std = 0; this step: %s)? Does each reward read completions in the "
            "form it gets (data.template: %s passes %s)? Are the prompts far too hard or too easy for the model? "
            "(run.no_signal_warn_steps = %d; 0 turns this off)", state.quiet_steps, stats.step,
            "; only the KL term trains" if cfg.algorithm.kl_coef > 0 else "", ", ".join(flat) or "none",
            cfg.data.template, form, n)


def _gathered(acc, x: torch.Tensor) -> torch.Tensor:
    """x (host) from every process, concatenated, float32 on the host. One process: x itself, without the
    device round trip, whose copy back would wait for the update's forward pass queued before it."""
    if acc.num_processes == 1:
        return x.float()
    return acc.gather(x.float().to(acc.device)).cpu()


def _to_device(x: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the work queued there (pinned, non-blocking on CUDA)."""
    if torch.device(device).type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def train_step(state: TrainState, examples: list[Example]) -> tuple[StepStats, list[dict]]:
    """One GRPO step on `examples` (this process's prompts). Returns stats and completion rows (every
    process's rows, in global batch order, on the main process; none on the others).

    Scoring runs inside the update, after the first micro-batch's forward pass has been queued on the device
    (`policy_update` asks for the advantages when its first loss needs them), so on a GPU the CPU-side
    verifiers overlap that forward; nothing is applied to the weights before the rewards are checked."""
    cfg = state.cfg
    t0 = time.perf_counter()
    chats, rollout = sample(state, examples)
    gen_s = time.perf_counter() - t0
    acc = state.accelerator
    scored: dict[str, Any] = {}

    def advantages() -> tuple[torch.Tensor, torch.Tensor]:
        if "adv" not in scored:
            t_r = time.perf_counter()
            try:
                table = score_rollout(state.rewards, examples, chats, rollout, cfg.data.assistant_prefix,
                                      cfg.data.template)
            except RewardError as e:
                raise RewardError(f"step {state.step + 1}: {e}") from e
            totals = torch.tensor(table.totals(), dtype=torch.float32)  # NaN: no reward scored the row
            valid = torch.tensor(table.scored(), dtype=torch.bool)
            # gathered before any check, so every process sees the same rewards and stops together (a process
            # that raised alone would leave the others waiting in the next collective)
            g = _gathered(acc, torch.stack([totals, valid.float()], dim=1))
            g_tot = g[g[:, 1] > 0, 0]  # the scored rows of all processes
            if not torch.isfinite(g_tot).all():
                raise FloatingPointError(f"step {state.step + 1}: non-finite rewards {g_tot.tolist()}")
            batch_std = g_tot.std() if len(g_tot) > 1 else torch.tensor(0.0)  # scale_rewards=batch: global batch
            adv = group_advantages(totals, rollout.group, cfg.algorithm.scale_rewards, cfg.algorithm.adv_eps,
                                   batch_std, valid=valid)
            scored.update(table=table, totals=totals, valid=valid, g_tot=g_tot, adv=adv,
                          unscored=float(1.0 - g[:, 1].mean()) if len(g) else 0.0,
                          seconds=time.perf_counter() - t_r)
        return scored["adv"], scored["valid"]

    t_upd = time.perf_counter()
    upd = policy_update(state, rollout, advantages)
    adv, valid = advantages()  # already computed by the update's first loss
    table, totals, g_tot, reward_s = scored["table"], scored["totals"], scored["g_tot"], scored["seconds"]
    update_s = time.perf_counter() - t_upd - reward_s  # includes the device sync of the logged floats
    if not math.isfinite(upd["loss"]):  # the gradient norm was checked where it is known (_optimizer_step)
        raise FloatingPointError(f"step {state.step + 1}: non-finite loss ({upd['loss']}) or gradient norm "
                                 f"({upd['grad_norm']}); stopping before any checkpoint is written")
    state.step += 1
    lengths = rollout.completion_mask.sum(dim=1)
    g_len = _gathered(acc, lengths)
    g_trunc = _gathered(acc, rollout.truncated)
    step_s = time.perf_counter() - t0
    groups = float(torch.unique(rollout.group).numel())
    g_zero = _gathered(acc, torch.tensor([[zero_std_fraction(totals, rollout.group, valid) * groups, groups]])).sum(0)
    extra = {"grpo/" + k: v for k, v in _adapter_metrics(state).items()}
    for r in state.rewards:  # counters a reward keeps, e.g. the code sandbox's infrastructure errors
        if callable(getattr(r.fn, "pop_metrics", None)):
            extra.update({f"grpo/reward/{r.label}/{k}": float(v) for k, v in r.fn.pop_metrics().items()})
    if "aux_loss" in upd:
        extra["grpo/moe/aux_loss"] = upd["aux_loss"]
    extra.update({f"grpo/update/{k}": upd[k] for k in ("oom_retries", "micro_batches", "micro_batch_tokens")})
    stats = StepStats(
        step=state.step, reward_mean=float(g_tot.mean()) if len(g_tot) else math.nan,
        reward_std=float(g_tot.std()) if len(g_tot) > 1 else 0.0, rewards=reward_stats(table),
        zero_std_frac=float(g_zero[0] / g_zero[1].clamp(min=1)), unscored_frac=scored["unscored"],
        completion_len_mean=float(g_len.mean()), completion_len_max=float(g_len.max()),
        truncated_frac=float(g_trunc.mean()), loss=upd["loss"], kl=upd["kl"], entropy=upd["entropy"],
        clip_low=upd["clip_low"], clip_high=upd["clip_high"], grad_norm=upd["grad_norm"],
        lr=float(state.scheduler.get_last_lr()[0]), step_seconds=step_s, gen_seconds=gen_s,
        gen_tokens_per_s=float(lengths.sum()) * acc.num_processes / max(gen_s, 1e-9), reward_seconds=reward_s,
        update_seconds=update_s, extra=extra)
    rows = []
    if cfg.run.save_completions:
        for i, text in enumerate(rollout.texts):
            ex = examples[int(rollout.group[i])]
            rows.append({"step": state.step, "id": ex.id, "prompt": ex.prompt, "answer": ex.answer,
                         "completion": cfg.data.assistant_prefix + text,
                         "rewards": dict(zip(table.names, table.values[i])),
                         "reward": float(totals[i]) if valid[i] else None,
                         "advantage": float(adv[i]), "truncated": bool(rollout.truncated[i])})
        # every process's rows, on the main process, in the global batch's order (local prompt g is prompt
        # g * num_processes + process_index of the step, see next_prompts)
        n, p = acc.num_processes, acc.process_index
        rows = gather_rows(acc, rows, [(int(rollout.group[i]) * n + p, i) for i in range(len(rows))])
    _watch_signal(state, table, stats)
    return stats, rows


def _adapter_metrics(state: TrainState) -> dict[str, float]:
    adapted = _adapted(state)
    if adapted is None:
        return {}
    from grpo.adapters import adapter_metrics

    return adapter_metrics(adapted)


# ---------------------------------------------------------------- checkpoints and the loop

def save(state: TrainState) -> Path | None:
    acc = state.accelerator
    acc.wait_for_everyone()
    # FSDP / DeepSpeed shard the weights: gathering the full state dict is collective (every process takes
    # part), and only the main process writes it. (Their optimizer state stays sharded: the checkpoint holds
    # the main process's shard, so --resume under FSDP/ZeRO restores weights exactly but not Adam moments.)
    sharded = acc.distributed_type.value in ("FSDP", "DEEPSPEED")
    weights = acc.get_state_dict(state.model) if sharded else None
    if not acc.is_main_process:
        return None
    trainer_state = {"step": state.step, "cursor": state.cursor, "epoch": state.epoch, "order": state.order,
                     "scheduler": state.scheduler.state_dict(), "rng": ckpt.rng_state(), "model_name": state.cfg.model.name}
    if state.cfg.run.save_optimizer:
        trainer_state["optimizer"] = state.optimizer.state_dict()
    import yaml

    return ckpt.save_checkpoint(state.cfg.run.output_dir, state.step, acc.unwrap_model(state.model),
                                state.tokenizer, trainer_state, yaml.safe_dump(to_dict(state.cfg), sort_keys=False),
                                keep_last=state.cfg.run.keep_last, state_dict=weights)


def resume(state: TrainState, path: str | Path) -> None:
    """Restore model, optimizer, scheduler, RNG and data position from a checkpoint."""
    ts = ckpt.load_trainer_state(path)
    ckpt.load_model_weights(path, state.accelerator.unwrap_model(state.model))
    if "optimizer" in ts:
        state.optimizer.load_state_dict(ts["optimizer"])
    else:
        log.warning("%s holds no optimizer state (saved with run.save_optimizer: false): Adam's moments start "
                    "from zero", path)
    state.scheduler.load_state_dict(ts["scheduler"])
    state.step, state.cursor, state.epoch, state.order = ts["step"], ts["cursor"], ts["epoch"], ts["order"]
    ckpt.set_rng_state(ts["rng"])
    for name in ("metrics.jsonl", "completions.jsonl"):
        truncate_jsonl(Path(state.cfg.run.output_dir) / name, state.step)


def run_eval(state: TrainState, tag: str) -> EvalResult | None:
    if not state.eval_examples:
        return None
    acc = state.accelerator
    model = acc.unwrap_model(state.model)
    with sampling_context(acc):
        res = evaluate(model, state.tokenizer, state.sampler, state.eval_examples, state.rewards, state.cfg.eval,
                       state.cfg.data.template, state.cfg.data.assistant_prefix, tag=tag, writer=state.writer,
                       progress=state.cfg.run.progress and acc.is_main_process,
                       max_prompt_tokens=state.cfg.data.max_prompt_tokens)
    acc.print(f"[eval {tag}] pass@1 (greedy) = {res.pass1:.3f} on {res.num_examples} held-out prompts"
              + "".join(f", {k} = {v:.3f}" for k, v in res.pass_at_k.items()))
    return res


def train(cfg: GRPOConfig, resume_from: str | None = None, model=None, tokenizer=None) -> dict[str, Any]:
    """Run a full GRPO job; returns the summary also written to <output_dir>/summary.json."""
    state = setup(cfg, model=model, tokenizer=tokenizer)
    acc, out = state.accelerator, Path(cfg.run.output_dir)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    if resume_from:
        path = ckpt.latest_checkpoint(out) if resume_from == "latest" else Path(resume_from)
        if path is None:
            raise ckpt.CheckpointError(f"--resume: no complete checkpoint under {out / 'checkpoints'}")
        resume(state, path)
        acc.print(f"resumed from {path} at step {state.step}")
    t0 = time.perf_counter()
    before = run_eval(state, "before") if cfg.eval.before and state.step == 0 else None
    evals = [before]
    bar = progress(cfg.optim.steps, "GRPO", enabled=cfg.run.progress and acc.is_main_process, initial=state.step)
    while state.step < cfg.optim.steps:
        stats, rows = train_step(state, next_prompts(state))
        state.writer.log_metrics(stats.to_row(), step=stats.step)
        if rows:
            state.writer.append("completions.jsonl", rows)
        bar.update(1)
        bar.set_postfix(reward=f"{stats.reward_mean:.3f}", len=f"{stats.completion_len_mean:.0f}",
                        s=f"{stats.step_seconds:.1f}")
        if cfg.run.save_every and state.step % cfg.run.save_every == 0 and state.step < cfg.optim.steps:
            save(state)
        if cfg.eval.every and state.step % cfg.eval.every == 0 and state.step < cfg.optim.steps:
            evals.append(run_eval(state, f"step{state.step}"))
    bar.close()
    final = save(state)
    after = run_eval(state, "after") if cfg.eval.after else None
    eval_seconds = sum(e.seconds for e in evals + [after] if e)
    summary = {"steps": state.step, "train_seconds": time.perf_counter() - t0 - eval_seconds,
               "eval_seconds": eval_seconds,
               "final_checkpoint": str(final) if final else None,
               "eval_before": asdict(before) if before else None, "eval_after": asdict(after) if after else None}
    if before and after:
        summary["pass1_gain"] = after.pass1 - before.pass1
        acc.print(f"held-out pass@1: before {before.pass1:.3f} -> after {after.pass1:.3f} "
                  f"({100 * (after.pass1 - before.pass1):+.1f} points)")
    state.writer.write_json("summary.json", summary)
    acc.print(run_report(out, summary))
    acc.end_training()
    return summary

"""std-step benchmark: our GRPO step and TRL's GRPOTrainer in one process, on one device, one table.

Workload "std-step" (grpo.std_step; the workload of the TRL baseline this project compares with, and TRL
runs here in the same process, so both figures come from one run): SmolLM2-135M-Instruct, 16 prompts x
G=8 = 128 completions per step, exactly 256 new tokens each (no early stop), temperature 1.0, bf16
weights, beta = 0, one inner iteration, one optimizer step. Both implementations get the same weights
(one state dict), the same chat prompts and the same device. Needs `pip install -e ".[bench]"` (TRL)
unless --skip-trl. Measured figures and their dates: docs/performance.md.

  python -m grpo.bench --gguf-dir /tmp/smollm2              # GPU: ours (engine) and TRL, one table
  python -m grpo.bench --cpu-tiny                           # CPU: tiny random Llama, short completions
  python -m grpo.bench --gguf-dir DIR --engine-only         # rollout engine variants and HF generate

Ours on a GPU, by default: the engine sampler (Triton decode attention), 128-row micro-batches with
gradient checkpointing, layers compiled (model.compile). `--micro-batch`, `--no-compile-model`,
`--no-grad-ckpt`, `--no-share-prompts` and `--master-fp32` change that.

"gen tok/s" follows the TRL baseline's definition: completions * tokens / median step seconds (the whole
step). Ours also reports pure sampling throughput (tokens / seconds inside sampler.generate).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import statistics
import time

import torch

from grpo.std_step import (FixedLength, add_workload_args, arithmetic_rows, build_model, chat_prompt_ids,
                           fill_defaults, load_weights, ours_config, ours_dtype)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib(gpu: bool):
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None


def reserved_gib(gpu: bool):
    """Peak memory the caching allocator held (tensors, CUDA graph pools, cached free blocks): what
    nvidia-smi would show, less the CUDA context."""
    return round(torch.cuda.max_memory_reserved() / 2**30, 2) if gpu else None


def free_memory(gpu: bool):
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def median_steady(times: list[float], warmup: int) -> float:
    return statistics.median(times[warmup:] or times)


# ------------------------------------------------------------------------------------------ ours

class PhaseTimer:
    """Wall time (device-synchronized) of named calls, for the profile step."""

    def __init__(self):
        self.t: dict[str, float] = {}

    def wrap(self, name, fn):
        def timed(*a, **k):
            sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync()
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0
            return out
        return timed


def bench_ours(args, config, sd, tok, rows, gpu: bool) -> dict:
    import grpo.train as train
    from grpo.data.records import Example

    device = "cuda" if gpu else "cpu"
    threads = torch.get_num_threads()
    cfg = ours_config(args, gpu, "/tmp/grpo_bench_ours")
    model = build_model(config, sd, ours_dtype(args, gpu), device)
    state = train.setup(cfg, model=model, tokenizer=tok)
    if args.keep_cache is not None:
        state.sampler.keep_cache = args.keep_cache
    state.sampler = FixedLength(state.sampler)
    forced = {}  # token_logprobs options the trainer does not expose, forced over its own arguments
    if not args.share_prompts:
        forced["share_prompts"] = False
    if args.update_attention != "auto":
        forced["attention"] = args.update_attention
    if args.logprob_chunk:
        forced["chunk_tokens"] = args.logprob_chunk
    if args.compile_logprobs is not None:  # default: the trainer's (compiled with the layers, model.compile)
        forced["compile_head"] = args.compile_logprobs
    if forced:
        plain = train.token_logprobs
        train.token_logprobs = lambda *a, **k: plain(*a, **{**k, **forced})
    examples = [Example(id=str(i), task="arithmetic", prompt=q, answer=a) for i, (q, a) in enumerate(rows)]
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    times, gen, upd, retries = [], [], [], 0
    for s in range(args.steps):
        batch = examples[s * args.prompts:(s + 1) * args.prompts]
        sync()
        t0 = time.perf_counter()
        stats, _ = train.train_step(state, batch)
        sync()
        times.append(time.perf_counter() - t0)
        gen.append(stats.gen_seconds)
        upd.append(stats.update_seconds)
        retries += stats.extra.get("grpo/update/oom_retries", 0)
        print(f"  ours step {s + 1}: {times[-1]:.3f} s (sampling {stats.gen_seconds:.3f} s, rewards "
              f"{stats.reward_seconds:.3f} s, update {stats.update_seconds:.3f} s)", flush=True)
    peak, reserved = peak_gib(gpu), reserved_gib(gpu)
    profile = profile_ours(state, train, examples[:args.prompts]) if args.profile else None
    if args.torch_profile:
        kernel_table(state, train, examples[:args.prompts], gpu)
    med = median_steady(times, args.warmup)
    n = args.prompts * args.group
    limits = state.micro_limits
    sampler_name = type(state.sampler.inner).__name__
    del state, model
    free_memory(gpu)
    torch.set_num_threads(threads)  # the trainer sets 1 on CUDA; TRL runs with torch's default, as in the TRL baseline
    master = ", fp32 master" if args.master_fp32 and gpu else ""
    master += f", adapter {args.adapter}" if getattr(args, "adapter", None) else ""
    return {"impl": f"ours ({sampler_name}{master})", "step_s_median": round(med, 4),
            "step_s_all": [round(t, 4) for t in times],
            "gen_tokens_per_s": round(n * args.tokens / med, 1),
            "sampling_tokens_per_s": round(n * args.tokens / median_steady(gen, args.warmup), 1),
            "peak_gpu_gib": peak, "peak_reserved_gib": reserved, "profile_s": profile,
            "update_s_median": round(median_steady(upd, args.warmup), 4), "oom_retries": retries,
            "micro_batch_limits": dataclasses.asdict(limits) if limits is not None else None}


def profile_ours(state, train, batch) -> dict:
    """One extra step with synchronized timers around each phase (slower than a timed step)."""
    timer = PhaseTimer()
    inner = state.sampler.inner
    patched = {"score_rollout": train.score_rollout, "token_logprobs": train.token_logprobs}
    train.score_rollout = timer.wrap("rewards", train.score_rollout)
    train.token_logprobs = timer.wrap("logprobs_forward", train.token_logprobs)
    acc_backward, opt_step = state.accelerator.backward, state.optimizer.step
    state.accelerator.backward = timer.wrap("backward", acc_backward)
    state.optimizer.step = timer.wrap("optimizer", opt_step)
    if hasattr(inner, "profile"):
        inner.profile, inner.timings = True, {}
    try:
        sync()
        t0 = time.perf_counter()
        train.train_step(state, batch)
        sync()
        total = time.perf_counter() - t0
    finally:
        for k, v in patched.items():
            setattr(train, k, v)
        state.accelerator.backward, state.optimizer.step = acc_backward, opt_step
        if hasattr(inner, "profile"):
            inner.profile = False
    out = {k: round(v, 4) for k, v in getattr(inner, "timings", {}).items()}
    out.update({k: round(v, 4) for k, v in timer.t.items()})
    out["step_total"] = round(total, 4)
    out["other"] = round(total - sum(v for k, v in out.items() if k != "step_total"), 4)
    return out


def kernel_table(state, train, batch, gpu: bool, rows: int = 40) -> None:
    """One more step with its policy update (forward, backward, optimizer) under torch.profiler: the ops
    that took the most device time, printed and saved with the update's wall and summed kernel time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    update, holder = train.policy_update, {}

    def profiled(*a, **k):
        with profile(activities=acts) as prof:
            sync()
            t0 = time.perf_counter()
            out = update(*a, **k)
            sync()
            holder["wall"] = time.perf_counter() - t0
        holder["prof"] = prof
        return out

    train.policy_update = profiled
    try:
        train.train_step(state, batch)
    finally:
        train.policy_update = update
    prof = holder["prof"]
    events = prof.key_averages()
    # kernels only, as the profiler table's footer counts them: an op row also carries its kernels' time
    device_total = sum(e.self_device_time_total for e in events
                       if e.device_type != torch.autograd.DeviceType.CPU and not e.is_user_annotation) / 1e6
    print(f"policy update under the profiler: wall {holder['wall']:.3f} s, kernels {device_total:.3f} s", flush=True)
    key = "self_cuda_time_total" if gpu else "self_cpu_time_total"
    table = events.table(sort_by=key, row_limit=rows)
    print(table, flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "kernels.txt"), "w") as f:
            f.write(table)


# ------------------------------------------------------------------------------------------- TRL

def bench_trl(args, config, sd, tok, gpu: bool) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t, self.times = None, []

        def on_step_begin(self, *a, **k):
            sync()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            self.times.append(time.perf_counter() - self.t)

    def correctness(completions, answer, **_):
        return [1.0 if f"\\boxed{{{a}}}" in c[0]["content"] else 0.0 for c, a in zip(completions, answer)]

    n = args.prompts * args.group
    # as the TRL baseline: n rows per step; TRL's sampler takes n / G distinct prompts and repeats each G times
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "answer": a}
                              for q, a in arithmetic_rows(n * args.trl_steps)])
    model = build_model(config, sd, torch.bfloat16 if gpu else torch.float32, "cuda" if gpu else "cpu")
    cfg = trl.GRPOConfig(
        output_dir="/tmp/grpo_bench_trl", per_device_train_batch_size=n, num_generations=args.group,
        max_completion_length=args.tokens, generation_kwargs={"min_new_tokens": args.tokens},
        beta=args.beta, learning_rate=1e-6, max_steps=args.trl_steps, logging_steps=1, save_strategy="no",
        report_to=[], bf16=gpu, use_cpu=not gpu, gradient_checkpointing=True, dataloader_num_workers=0, seed=0)
    timer = StepTimer()
    trainer = trl.GRPOTrainer(model=model, processing_class=tok, reward_funcs=[correctness], args=cfg,
                              train_dataset=data, callbacks=[timer])
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak, reserved = peak_gib(gpu), reserved_gib(gpu)
    med = median_steady(timer.times, args.warmup)
    del trainer, model
    free_memory(gpu)
    return {"impl": f"trl.GRPOTrainer {trl.__version__}", "step_s_median": round(med, 4),
            "step_s_all": [round(t, 4) for t in timer.times], "gen_tokens_per_s": round(n * args.tokens / med, 1),
            "peak_gpu_gib": peak, "peak_reserved_gib": reserved}


# --------------------------------------------------------------------------- engine-only section

def time_sampler(sampler, prompt_ids, group, params, reps: int) -> float:
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        sampler.generate(prompt_ids, group, params)
        sync()
        times.append(time.perf_counter() - t0)
    return min(times[1:] or times)


def bench_engine(args, config, sd, tok, rows, gpu: bool) -> list[dict]:
    """Sampling alone (std-step rollout), our engine variants next to HF generate; and checks on the
    real model: greedy agreement with HF generate and sampled logprobs against a forward pass."""
    from grpo.engine import EngineSampler
    from grpo.rollout import HFSampler, SamplingParams

    device = "cuda" if gpu else "cpu"
    model = build_model(config, sd, torch.bfloat16 if gpu else torch.float32, device).train()
    prompt_ids = chat_prompt_ids(tok, rows[:args.prompts])
    n = args.prompts * args.group
    out = []

    def record(name, tokens, seconds, **extra):
        r = {"impl": name, "rows": n, "tokens": tokens, "seconds": round(seconds, 4),
             "tokens_per_s": round(n * tokens / seconds, 1), **extra}
        out.append(r)
        print(" ", json.dumps(r), flush=True)

    full = SamplingParams(max_new_tokens=args.tokens, temperature=1.0, min_new_tokens=args.tokens)
    variants = [("engine graphs+compile (fused decode)", dict(cuda_graphs=True, compile=True)),
                ("engine graphs+compile, unfused decode", dict(cuda_graphs=True, compile=True, fused=False)),
                ("engine graphs+compile, SDPA decode attention",
                 dict(cuda_graphs=True, compile=True, attention_kernel="sdpa")),
                ("engine graphs", dict(cuda_graphs=True, compile=False)),
                ("engine eager", dict(cuda_graphs=False, compile=False))] if gpu else \
               [("engine eager", dict(cuda_graphs=False, compile=False))]
    for name, kw in variants:
        eng = EngineSampler(model, tok, max_batch=n, max_seq_len=4096, **kw)
        tokens = args.tokens if kw.get("cuda_graphs") or not gpu else min(args.tokens, 64)
        p = dataclasses.replace(full, max_new_tokens=tokens, min_new_tokens=tokens)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        t = time_sampler(eng, prompt_ids, args.group, p, reps=3)
        record(name, tokens, t, peak_gpu_gib=peak_gib(gpu))
        eng.release()
        del eng
        free_memory(gpu)
    short = dataclasses.replace(full, max_new_tokens=min(args.tokens, 64), min_new_tokens=min(args.tokens, 64))
    record("hf generate (dynamic cache)", short.max_new_tokens,
           time_sampler(HFSampler(model, tok, batch_size=n), prompt_ids, args.group, short, reps=2))
    if args.hf_static:  # transformers' static cache; its generate may compile the model itself (minutes)
        try:
            model.generation_config.cache_implementation = "static"
            record("hf generate (static cache)", short.max_new_tokens,
                   time_sampler(HFSampler(model, tok, batch_size=n), prompt_ids, args.group, short, reps=2))
        except Exception as e:  # noqa: BLE001 - report, do not abort the benchmark
            print(f"  hf static cache failed: {type(e).__name__}: {e}")
        finally:
            model.generation_config.cache_implementation = None
    out.append(check_engine(model, tok, prompt_ids, gpu))
    print(" ", json.dumps(out[-1]), flush=True)
    if gpu:
        out.append(check_decode_kernel(model, tok, prompt_ids))
        print(" ", json.dumps(out[-1]), flush=True)
        out.append(check_fused_decode(model, tok, prompt_ids))
        print(" ", json.dumps(out[-1]), flush=True)
    del model
    free_memory(gpu)
    return out


def check_engine(model, tok, prompt_ids, gpu: bool) -> dict:
    """Real-model checks: greedy tokens vs HF generate (bf16 near-ties may split late), and the engine's
    sampled logprobs vs one forward pass over prompt + completion."""
    from grpo.engine import EngineSampler
    from grpo.rollout import HFSampler, SamplingParams

    g = SamplingParams(max_new_tokens=64, temperature=0.0)
    eng = EngineSampler(model, tok, max_batch=128)
    a = eng.generate(prompt_ids, 1, g)
    b = HFSampler(model, tok).generate(prompt_ids, 1, g)
    rows_same, prefix = greedy_agreement(a.completion_ids, b.completion_ids)
    s = eng.generate(prompt_ids, 2, SamplingParams(max_new_tokens=64, temperature=1.0, min_new_tokens=64))
    dev = next(model.parameters()).device
    diffs = []
    with torch.no_grad():
        for i, p in enumerate(s.prompt_ids):
            c = s.completion_ids[i].tolist()
            logits = model(torch.tensor([p + c], device=dev)).logits[0, len(p) - 1:-1].float()
            ref = logits.log_softmax(-1).gather(-1, torch.tensor(c, device=dev)[:, None])[:, 0].cpu()
            diffs.append((ref - s.logprobs[i]).abs())
    d = torch.cat(diffs)
    eng.release()
    width = min(a.completion_ids.shape[1], b.completion_ids.shape[1])
    return {"check": "real model", "greedy_rows_identical": rows_same, "rows": len(prompt_ids),
            "greedy_mean_agreeing_prefix": prefix, "greedy_width": width,
            "logprob_absdiff_mean": round(float(d.mean()), 5), "logprob_absdiff_max": round(float(d.max()), 4)}


def check_decode_kernel(model, tok, prompt_ids) -> dict:
    """The Triton decode attention against SDPA in fp32 on random bf16 inputs (std-step shapes), and
    greedy engine tokens with the kernel vs with SDPA on the real model."""
    from grpo.engine import EngineSampler
    from grpo.engine.decode_attention import _sdpa, triton_decode_attention
    from grpo.rollout import SamplingParams

    gen = torch.Generator(device="cuda").manual_seed(0)
    n, hkv, rep, d, slots = 128, 3, 3, 64, 320
    q, k, v = (torch.randn(s, generator=gen, device="cuda", dtype=torch.bfloat16)
               for s in ((n, hkv, rep, d), (n, hkv, slots, d), (n, hkv, slots, d)))
    mask = torch.zeros(n, slots, device="cuda", dtype=torch.bfloat16)
    for i in range(n):
        mask[i, : i % 40] = float("-inf")  # left padding of 0-39 slots
    worst = 0.0
    for length in (64, 131, 320):
        ref = _sdpa(q.float(), k[:, :, :length].float(), v[:, :, :length].float(), mask[:, :length].float(), d ** -0.5)
        out = triton_decode_attention(q, k[:, :, :length], v[:, :, :length], mask[:, :length], d ** -0.5)
        worst = max(worst, float((out.float() - ref).abs().max()))
    g = SamplingParams(max_new_tokens=64, temperature=0.0)
    a = EngineSampler(model, tok, max_batch=128, attention_kernel="triton")
    ta = a.generate(prompt_ids, 1, g).completion_ids
    a.release()
    b = EngineSampler(model, tok, max_batch=128, attention_kernel="sdpa")
    tb = b.generate(prompt_ids, 1, g).completion_ids
    b.release()
    rows_same, prefix = greedy_agreement(ta, tb)
    return {"check": "triton decode attention", "max_absdiff_vs_fp32_sdpa": round(worst, 5),
            "greedy_rows_identical_triton_vs_sdpa": rows_same, "rows": len(prompt_ids),
            "greedy_mean_agreeing_prefix": prefix}


def greedy_agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    """Two greedy token tables [rows, T] over their common width: rows identical throughout, and the mean
    length of the prefix on which they agree (bf16 near-ties make them split late)."""
    width = min(a.shape[1], b.shape[1])
    same = a[:, :width] == b[:, :width]
    return int(same.all(1).sum()), round(float(same.long().cumprod(1).sum(1).float().mean()), 1)


def check_fused_decode(model, tok, prompt_ids) -> dict:
    """The fused decode kernels against their fp32 reference on the real model's first layer (bf16
    weights, std-step rows), and greedy engine tokens fused vs unfused."""
    from grpo.engine import EngineSampler
    from grpo.engine.fused_decode import (norm_gate_up, norm_qkv_rope, reference_norm_gate_up,
                                          reference_norm_qkv_rope)
    from grpo.rollout import SamplingParams

    layer = model.get_decoder().layers[0]
    at, mlp = layer.self_attn, layer.mlp
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, slots, d = 128, 320, at.head_dim
    hkv = model.config.num_key_value_heads
    x = torch.randn(n, model.config.hidden_size, generator=gen, device="cuda", dtype=torch.bfloat16)
    cos, sin = model.get_decoder().rotary_emb(x, torch.arange(slots, device="cuda")[None])
    pos = torch.randint(0, slots, (n,), generator=gen, device="cuda")
    slot = torch.tensor([200], device="cuda")
    norm = layer.input_layernorm
    args = (x, norm.weight, norm.variance_epsilon, at.q_proj.weight, at.k_proj.weight, at.v_proj.weight,
            None, None, None, cos[0], sin[0], pos, slot)
    caches = [torch.zeros(n, hkv, slots, d, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    q = norm_qkv_rope(*args, caches[0], caches[1])
    ref = reference_norm_qkv_rope(*args, caches[2], caches[3])
    post = layer.post_attention_layernorm
    act = norm_gate_up(x, post.weight, post.variance_epsilon, mlp.gate_proj.weight, mlp.up_proj.weight)
    act_ref = reference_norm_gate_up(x, post.weight, post.variance_epsilon, mlp.gate_proj.weight, mlp.up_proj.weight)
    rel = lambda a, b: float((a.float() - b.float()).abs().max() / b.float().abs().max())  # noqa: E731
    g = SamplingParams(max_new_tokens=64, temperature=0.0)
    tokens = []
    for fused in (True, False):
        eng = EngineSampler(model, tok, max_batch=128, fused=fused)
        tokens.append(eng.generate(prompt_ids, 1, g).completion_ids)
        eng.release()
    rows_same, prefix = greedy_agreement(*tokens)
    return {"check": "fused decode", "q_maxrel": round(rel(q, ref), 4),
            "k_maxrel": round(rel(caches[0], caches[2]), 4), "v_maxrel": round(rel(caches[1], caches[3]), 4),
            "gate_up_maxrel": round(rel(act, act_ref), 4),
            "greedy_rows_identical_fused_vs_unfused": rows_same, "rows": len(prompt_ids),
            "greedy_mean_agreeing_prefix": prefix}


def bench_mla_step(args, config, sd, tok, rows, gpu: bool) -> dict:
    """`bench_ours` on the MLA conversion of the same weights (grpo.bench_mla_moe.mla_config), the whole GRPO
    step: engine rollout and update."""
    from grpo.bench_mla_moe import mla_config

    adapter = "{mla: {" + ", ".join(f"{k}: {v}" for k, v in mla_config(config).items()) + "}}"
    print(f"ours, {adapter}:", flush=True)
    try:  # a failure here must not cost the MLA/MoE section after it
        r = bench_ours(argparse.Namespace(**{**vars(args), "adapter": adapter}), copy.deepcopy(config), sd, tok,
                       rows, gpu)  # (a copy: the trainer's conversion marks the model's config)
    except Exception:  # noqa: BLE001 - reported, then the section runs
        import traceback

        print(traceback.format_exc(), flush=True)
        free_memory(gpu)
        return None
    print(" ", json.dumps(r), flush=True)
    return r


# ---------------------------------------------------------------------------------------- main

def print_table(results: list[dict], device: str, args) -> None:
    print(f"\nstd-step on {device}: {args.prompts} prompts x G={args.group}, {args.tokens} new tokens, "
          f"beta={args.beta}, {time.strftime('%Y-%m-%d')}")
    print("| impl | median s/step | gen tok/s | sampling tok/s | peak GiB | peak reserved GiB |\n"
          "|---|---|---|---|---|---|")
    for r in results:
        sampling = r.get("sampling_tokens_per_s")  # inside sampler.generate; TRL's is not timed apart
        print(f"| {r['impl']} | {r['step_s_median']:.3f} | {r['gen_tokens_per_s']:,.0f} | "
              f"{'-' if sampling is None else f'{sampling:,.0f}'} | {r['peak_gpu_gib']} | {r.get('peak_reserved_gib')} |")
    ours = [r for r in results if r["impl"].startswith("ours")]
    trl = [r for r in results if r["impl"].startswith("trl")]
    if ours and trl:
        print(f"ratio TRL/ours (s/step): {trl[0]['step_s_median'] / ours[0]['step_s_median']:.2f}x")
    for r in ours[1:]:  # --mla-moe: the converted model's step against the first (dense) one
        print(f"speed {r['impl']} / {ours[0]['impl']}: {ours[0]['step_s_median'] / r['step_s_median']:.2f}x")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(p)
    p.add_argument("--trl-steps", type=int, default=None, help="TRL steps (default 5 GPU, 4 CPU)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--engine-only", action="store_true",
                   help="also run the sampling-only section (after the table; not yet seen finishing on a GPU)")
    p.add_argument("--hf-static", action="store_true", help="in that section, also HF generate with a static cache")
    p.add_argument("--adapter", default=None,
                   help="ours on a converted model: model.adapter as YAML, e.g. '{mla: {rank: 64, rope_dims: 8}}'")
    p.add_argument("--mla-moe", action="store_true",
                   help="MLA/MoE section (grpo.bench_mla_moe): ours also on the MLA conversion (unless --skip-ours), "
                        "then dense vs MLA vs MoE rollout tok/s and KV bytes/token")
    from grpo.bench_mla_moe import add_arguments as mla_moe_arguments

    mla_moe_arguments(p)
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                   help="one extra step with synchronized phase timers (prefill, decode, rewards, ...)")
    p.add_argument("--torch-profile", action="store_true", help="one extra step under torch.profiler")
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "bench.json") if os.environ.get("OUT") else None)
    from grpo import bench_scale

    bench_scale.add_arguments(p)
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.cpu_tiny
    if not gpu and not args.cpu_tiny and not args.gguf_dir:
        p.error("no GPU: use --cpu-tiny, or --gguf-dir to run the real model on CPU")
    from grpo import bench_scale

    args.token_list = bench_scale.int_list(args.tokens) if args.tokens else []
    args.tokens = args.token_list[0] if args.token_list else None
    fill_defaults(args, gpu)
    args.trl_steps = args.trl_steps or (5 if gpu else 4)
    args.token_list = args.token_list or [args.tokens]
    if args.shape or args.model:
        return bench_scale.run(args, gpu)
    if len(args.token_list) > 1:
        p.error("a list of --tokens needs --shape or --model")
    config, sd, tok = load_weights(args)
    device = torch.cuda.get_device_name() if gpu else "cpu"
    rows = arithmetic_rows(args.prompts * max(args.steps, args.trl_steps) + 8)
    results, engine_rows = [], []
    if not args.skip_ours:
        print("ours:", flush=True)
        results.append(bench_ours(args, config, sd, tok, rows, gpu))
        print(" ", json.dumps(results[-1]), flush=True)
        if args.mla_moe:
            results += [r for r in [bench_mla_step(args, config, sd, tok, rows, gpu)] if r is not None]
    if not args.skip_trl:
        print("TRL:", flush=True)
        results.append(bench_trl(args, config, sd, tok, gpu))
        print(" ", json.dumps(results[-1]), flush=True)
    if results:
        print_table(results, device, args)
    if args.engine_only:
        print("engine section:", flush=True)
        engine_rows = bench_engine(args, config, sd, tok, rows, gpu)
    mla_moe = None
    if args.mla_moe:
        from grpo.bench_mla_moe import run, section_args

        print("MLA / MoE section:", flush=True)
        mla_moe = run(section_args(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "args": vars(args), "results": results, "engine": engine_rows,
                       "mla_moe": mla_moe}, f, indent=1)


if __name__ == "__main__":
    main()

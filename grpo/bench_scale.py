"""Scaling bench: the std-step workload at public model shapes and long completions, each figure next to the
step's physical floor on the device it runs on. Reached through `python -m grpo.bench`:

  python -m grpo.bench --shape smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b --tokens 256 --gguf-dir /tmp/smollm2
  python -m grpo.bench --shape qwen2.5-1.5b --tokens 2048 --skip-trl          # ours only, peak memory
  python -m grpo.bench --model /path/to/checkpoint --tokens 1024 --precision both
  python -m grpo.bench --cpu-tiny --shape tiny --skip-trl --tokens 8,16        # CPU: the table's plumbing

`--shape NAME[,NAME]` builds randomly initialised models of public configs (grpo.shapes.SHAPES) on the
device, from one seed, so ours and TRL get the same weights; weights do not change the speed when every
completion runs to full length (std-step bans EOS). The tokenizer is SmolLM2's (`--gguf-dir`, else the
bundled one; `--tokenizer` for another): sampled ids past its vocabulary decode to nothing. `--model`
loads a real checkpoint (local directory or Hub id) and its tokenizer instead. `--tokens` takes a list.

Floors (grpo.shapes.step_floor) use two rates measured at the start of the same run: the device's memory
bandwidth (a device-to-device copy, bytes read + written, best of 10) and its matmul rate (an 8192^3 GEMM
in bf16 on a GPU, best of 10; smaller and in fp32 on a CPU). "s/step / floor" is the median s/step over the
floor's sum of sampling, update and optimizer floors (TRL's rows get the same ratio).

`--precision bf16` runs our trainer on bf16 weights as TRL does; `recipe` on fp32 master weights under
bf16 autocast, as a recipe runs (what users get); `both` runs ours twice. Each workload that fails (an
OOM, say) prints its error in the table and the bench goes on. `--memory-limit-gib` caps torch's caching
allocator (torch.cuda.set_per_process_memory_fraction), to show a smaller GPU's behaviour on a large one.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import time
import traceback

import torch

from grpo import bench, std_step
from grpo.shapes import SHAPES, Shape, Workload, shape_named, step_floor


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scaling (grpo.bench_scale)")
    g.add_argument("--shape", default=None, help=f"comma-separated shapes: {', '.join(SHAPES)}")
    g.add_argument("--model", default=None, help="a checkpoint (local directory or Hub id) instead of --shape")
    g.add_argument("--tokenizer", default=None, help="tokenizer for --shape (default: --gguf-dir's, else the bundled SmolLM2)")
    g.add_argument("--precision", choices=("bf16", "recipe", "both"), default=None,
                   help="ours on bf16 weights (as TRL), on fp32 master weights + bf16 autocast (recipe), or both")
    g.add_argument("--micro-batch-tokens", default=None,
                   help="ours: optim.micro_batch_tokens (auto | 0 | N; default: the config's, auto)")
    g.add_argument("--no-oom-retry", action="store_true", help="ours: optim.oom_retry=false")
    g.add_argument("--memory-limit-gib", type=float, default=None, help="cap torch's allocator on the GPU")
    g.add_argument("--floors", action=argparse.BooleanOptionalAction, default=True,
                   help="measure bandwidth and matmul rate and print each workload's floor")


def int_list(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x]


# ---------------------------------------------------------------- rates measured in this run

def _best_seconds(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        bench.sync()
        t0 = time.perf_counter()
        fn()
        bench.sync()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_rates(gpu: bool, copy_bytes: int | None = None, gemm: int | None = None) -> dict:
    """Memory bandwidth (bytes/s, a device-to-device copy: bytes read + written) and matmul FLOP/s (a square
    GEMM; bf16 on a GPU, fp32 on a CPU, which has no fast bf16 on most hosts), each the best of 10."""
    device = "cuda" if gpu else "cpu"
    copy_bytes = copy_bytes or (4 * 2**30 if gpu else 64 * 2**20)
    gemm = gemm or (8192 if gpu else 512)
    dtype = torch.bfloat16 if gpu else torch.float32
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t_copy = _best_seconds(lambda: dst.copy_(src), 10)
    del src, dst
    a = torch.randn(gemm, gemm, dtype=dtype, device=device)
    b = torch.randn(gemm, gemm, dtype=dtype, device=device)
    t_mm = _best_seconds(lambda: a @ b, 10)
    del a, b
    bench.free_memory(gpu)
    return {"bandwidth": 2 * copy_bytes / t_copy, "flops": 2.0 * gemm ** 3 / t_mm, "copy_bytes": copy_bytes,
            "gemm": gemm, "dtype": str(dtype).replace("torch.", "")}


# ---------------------------------------------------------------- models and tokenizers

def load_tokenizer(args):
    from transformers import AutoTokenizer

    if args.model:
        tok = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    elif args.tokenizer:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    elif args.gguf_dir:
        tok = AutoTokenizer.from_pretrained(args.gguf_dir, gguf_file=std_step.GGUF)
    else:
        from grpo.models import load_tokenizer as bundled

        tok = bundled("smollm2-135m-instruct")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def shape_config(shape: Shape, tok):
    """The transformers config of `shape` with the tokenizer's special ids (EOS is what std-step bans)."""
    if len(tok) > shape.vocab:
        raise ValueError(f"{shape.name}: vocabulary {shape.vocab} < the tokenizer's {len(tok)}")
    return shape.hf_config(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def checkpoint_weights(path: str):
    """(config, bf16 state dict on the host) of a checkpoint, shared by ours and TRL."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    config, sd = model.config, {k: v.detach().clone() for k, v in model.state_dict().items()}
    del model
    return config, sd


# ---------------------------------------------------------------- one workload, the table

def floor_row(shape: Shape, w: Workload, rates: dict | None, grad_ckpt: bool, master_fp32: bool) -> dict:
    if rates is None:
        return {}
    f = step_floor(shape, w, rates["bandwidth"], rates["flops"], checkpointing=grad_ckpt, master_fp32=master_fp32)
    return {f"floor_{k}_s": v for k, v in f.items()}


def mean_prompt_len(tok, rows) -> float:
    from grpo.data.records import Example
    from grpo.rollout import encode_prompts

    examples = [Example(id=str(i), task="arithmetic", prompt=q, answer=a) for i, (q, a) in enumerate(rows)]
    _, ids = encode_prompts(tok, examples, "plain", "")  # as std_step.ours_config renders them
    return statistics.fmean(len(x) for x in ids)


def run_workload(args, name: str, shape: Shape, config, sd, tok, gpu: bool, rates: dict | None) -> list[dict]:
    """Ours (each precision asked for) and TRL on one (model, tokens) workload; a failure becomes a row."""
    rows = std_step.arithmetic_rows(args.prompts * max(args.steps, args.trl_steps) + 8)
    w = Workload(args.prompts, args.group, mean_prompt_len(tok, rows[:args.prompts]), args.tokens)
    base = {"shape": name, "rows": w.rows, "tokens": args.tokens, "prompt_len": round(w.prompt_len, 1)}
    out = []
    runs = [("ours", p) for p in {"bf16": ["bf16"], "recipe": ["recipe"], "both": ["bf16", "recipe"]}[args.precision]
            if not args.skip_ours] + ([("trl", "bf16")] if not args.skip_trl else [])
    for impl, precision in runs:
        a = copy.copy(args)
        a.master_fp32 = precision == "recipe"
        print(f"{name}, {w.rows} rows x {args.tokens} tokens: {impl} ({precision})", flush=True)
        try:
            r = (bench.bench_ours(a, config, sd, tok, rows, gpu) if impl == "ours"
                 else bench.bench_trl(a, config, sd, tok, gpu))
        except Exception as e:  # noqa: BLE001 - one failed workload (an OOM, say) must not lose the table
            traceback.print_exc()
            r = {"impl": f"{impl} ({precision})", "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"}
        _reset(gpu)
        r.update(base, precision=precision, **floor_row(shape, w, rates, args.grad_ckpt, a.master_fp32))
        if "floor_step_s" in r and "step_s_median" in r:
            r["over_floor"] = round(r["step_s_median"] / r["floor_step_s"], 2)
        out.append(r)
        print(" ", json.dumps(r), flush=True)
    trl = next((r for r in out if r["impl"].startswith("trl") and "step_s_median" in r), None)
    for r in out:
        if trl is not None and r["impl"].startswith("ours") and "step_s_median" in r:
            r["trl_over_ours"] = round(trl["step_s_median"] / r["step_s_median"], 2)
    return out


def _reset(gpu: bool) -> None:
    """Between workloads: compiled graphs of the last model dropped (dynamo's caches hold its modules and
    count recompiles against a limit), memory given back."""
    torch._dynamo.reset()
    gc.collect()
    bench.free_memory(gpu)


def print_table(results: list[dict], device: str, rates: dict | None, args) -> None:
    print(f"\nscaling bench on {device}, {time.strftime('%Y-%m-%d')}: {args.prompts} prompts x G={args.group}, "
          f"exactly the given new tokens, beta={args.beta}, one optimizer step")
    if rates:
        print(f"floors from rates measured in this run: memory {rates['bandwidth'] / 1e9:,.0f} GB/s (device copy of "
              f"{rates['copy_bytes'] / 2**30:.2f} GiB, read + write), matmul {rates['flops'] / 1e12:.2f} TFLOP/s "
              f"({rates['gemm']}^3 {rates['dtype']})")
    print("| shape | rows x tokens | impl | s/step | sampling tok/s | update s (micro-batch limit) | peak GiB | "
          "floor s (sampling + update + optimizer) | s/step / floor | TRL/ours |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        impl = r["impl"] + (", recipe precision" if r.get("precision") == "recipe" and "fp32" not in r["impl"] else "")
        if "error" in r:
            print(f"| {r['shape']} | {r['rows']} x {r['tokens']} | {impl} | failed: {r['error']} | | | | | | |")
            continue
        floor = (f"{r['floor_step_s']:.3f} ({r['floor_sampling_s']:.3f} + {r['floor_update_s']:.3f} + "
                 f"{r['floor_optimizer_s']:.3f})" if "floor_step_s" in r else "-")
        sampling = r.get("sampling_tokens_per_s")
        update = "-"
        if "update_s_median" in r:
            lim = r.get("micro_batch_limits") or {}
            update = (f"{r['update_s_median']:.3f} ({lim.get('rows')} rows, {lim.get('tokens') or 'any'} tokens"
                      + (f", {r['oom_retries']} OOM retries" if r.get("oom_retries") else "") + ")")
        print(f"| {r['shape']} | {r['rows']} x {r['tokens']} | {impl} | {r['step_s_median']:.3f} | "
              f"{'-' if sampling is None else f'{sampling:,.0f}'} | {update} | "
              f"{'-' if r['peak_gpu_gib'] is None else r['peak_gpu_gib']} | {floor} | {r.get('over_floor', '-')} | "
              f"{r.get('trl_over_ours', '-')} |")


def run(args, gpu: bool) -> list[dict]:
    """The scaling bench over every (shape or model) x tokens of `args`; prints the table, returns its rows."""
    if args.shape and args.model:
        raise SystemExit("--shape and --model: one or the other")
    args.precision = args.precision or ("recipe" if args.master_fp32 else "bf16")
    if args.memory_limit_gib and gpu:
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, args.memory_limit_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory))
    device = torch.cuda.get_device_name() if gpu else "cpu"
    rates = measure_rates(gpu) if args.floors else None
    if rates:
        print(f"rates: {json.dumps(rates)}", flush=True)
    tok = load_tokenizer(args)
    if args.model:
        config, sd = checkpoint_weights(args.model)
        models = [(args.model, Shape.from_hf_config(config, args.model), config, sd)]
    else:
        models = [(n, shape_named(n), None, None) for n in args.shape.split(",")]
    results = []
    for name, shape, config, sd in models:
        config = config if config is not None else shape_config(shape, tok)
        for tokens in args.token_list:
            a = copy.copy(args)
            a.tokens = tokens
            results += run_workload(a, name, shape, config, sd, tok, gpu, rates)
    print_table(results, device, rates, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "rates": rates, "args": {k: v for k, v in vars(args).items()},
                       "results": results}, f, indent=1, default=str)
    return results

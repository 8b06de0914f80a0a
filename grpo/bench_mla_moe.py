"""Rollout engine speed of the dense model, its MLA conversion and its MoE conversion (issue 24).

For each model: KV-cache bytes per token (the engine's own cache tensors, bf16) and rollout throughput,
16 prompts x G = 8 = 128 rows, every completion exactly T new tokens (min_new_tokens = T, temperature 1),
at T = 256, 1,024 and 4,096; the engine as the trainer builds it (CUDA graphs, compiled ops, the fused
decode step and fused sampler where the model allows them). Models, SmolLM2-135M-shaped:

    dense    Llama (30 layers, 9 query / 3 KV heads of 64, hidden 576, MLP 1536)
    mla      grpo.adapters.mla, rank 64, 8 rotary dims per KV head ("rotation" selection, weight-only)
    moe      grpo.adapters.moe, 8 routed experts top-2 + 1 shared (no bias calibration)

With --gguf-dir the weights are SmolLM2-135M-Instruct's (converted, not healed: the speed does not depend
on it, every completion runs to T); without, a random init of the same shapes. The MoE model also samples
with HF generate at the first T (the sampler MoE recipes used before the engine served MoE), both with
routing replay recording on, as in training. Then checks in bf16: the fused MLA engine's greedy tokens
against `mla_generate` and against the unfused engine, the MoE engine's fused against unfused (tokens and
recorded routes), and the MLA attention kernel against its fp32 reference at the table's lengths.

    python -m grpo.bench --gguf-dir DIR --skip-trl --mla-moe   # GPU: std-step dense and MLA, then this
    python -m grpo.bench_mla_moe [--gguf-dir DIR] [--tokens 256,1024,4096] [--models dense,mla,moe,mla+moe]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import traceback

import torch

MLA = {"rank": 64, "rope_dims": 8, "rope_selection": "rotation"}
MOE = {"num_experts": 8, "top_k": 2, "num_shared": 1}


def smollm2_config():
    """SmolLM2-135M's shapes (its config.json), for a random init when no GGUF is given."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
                       rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


def mla_config(config) -> dict:
    """`MLA`, or rank 16 / 4 rotary dims for grpo.bench's tiny Llama (the CPU test: its KV rows are fewer than 64)."""
    return MLA if config.hidden_size >= 256 else {"rank": 16, "rope_dims": 4, "rope_selection": "rotation"}


def weights(args):
    """(config, fp32 state dict, tokenizer): the GGUF's, or SmolLM2 shapes at random (`--tiny`: grpo.bench's
    tiny Llama, for the CPU test)."""
    from transformers import AutoModelForCausalLM

    from grpo.std_step import load_weights, tiny_llama_config

    if args.gguf_dir:
        return load_weights(args)
    _, _, tok = load_weights(argparse.Namespace(gguf_dir=None))
    torch.manual_seed(0)
    config = tiny_llama_config() if args.tiny else smollm2_config()
    return config, AutoModelForCausalLM.from_config(config).state_dict(), tok


def build(name: str, config, sd, device):
    """The bf16 (fp32 on CPU) model of one row of the table, in train mode as the trainer holds it."""
    from grpo.adapters import apply_adapters
    from grpo.std_step import build_model

    model = build_model(copy.deepcopy(config), sd, torch.bfloat16 if device == "cuda" else torch.float32, device)
    mla = mla_config(config)  # (a copy of the config: the adapters mark the model's own)
    adapters = {"dense": None, "mla": {"mla": mla}, "moe": {"moe": MOE}, "mla+moe": {"mla": mla, "moe": MOE}}[name]
    if adapters:
        model = apply_adapters(model, adapters)
    return model.train()


def timed_rollouts(sampler, model, prompt_ids, group: int, tokens: int, reps: int) -> float:
    """Seconds of the fastest of `reps` rollouts after a first (warm-up: graph captures, compiles), with
    routing replay recording as the trainer runs it (a no-op for dense / MLA models)."""
    from grpo.adapters import routing_replay
    from grpo.bench import sync
    from grpo.rollout import SamplingParams

    params = SamplingParams(max_new_tokens=tokens, temperature=1.0, min_new_tokens=tokens)
    times = []
    for _ in range(reps + 1):
        sync()
        t0 = time.perf_counter()
        with routing_replay(model, "record"):
            sampler.generate(prompt_ids, group, params)
        sync()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def bench_models(args, config, sd, tok, prompt_ids, device) -> list[dict]:
    from grpo.bench import free_memory, peak_gib
    from grpo.engine import EngineSampler
    from grpo.rollout import HFSampler

    gpu = device == "cuda"
    rows = len(prompt_ids) * args.group
    longest = max(len(p) for p in prompt_ids)
    out = []
    for name in args.models:
        row = {"model": name, "rows": rows, "tok_s": {}, "peak_gib": {}}
        try:  # one model failing (a kernel that does not compile, out of memory) must not cost the others
            model = build(name, config, sd, device)
            eng = EngineSampler(model, tok, max_batch=rows, max_seq_len=longest + max(args.tokens) + 64)
            row.update(kv_bytes_per_token=eng.kv_bytes_per_token, fused=eng.fused, fused_sampling=eng.fused_sampling)
            for t in args.tokens:
                if gpu:
                    torch.cuda.reset_peak_memory_stats()
                s = timed_rollouts(eng, model, prompt_ids, args.group, t, reps=1 if t > 1024 else 2)
                row["tok_s"][t] = round(rows * t / s, 1)
                row["peak_gib"][t] = peak_gib(gpu)
                eng.release()
                print(f"  {name} T={t}: {s:.3f} s, {row['tok_s'][t]:,.0f} tok/s", flush=True)
            if name == "moe" and not args.skip_hf:
                t = args.tokens[0]
                s = timed_rollouts(HFSampler(model, tok, batch_size=rows), model, prompt_ids, args.group, t, reps=1)
                row["hf_generate_tok_s"] = {t: round(rows * t / s, 1)}
                print(f"  {name} HF generate T={t}: {s:.3f} s, {rows * t / s:,.0f} tok/s", flush=True)
        except Exception as e:  # noqa: BLE001 - reported in the table and the JSON
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"  {name} failed:\n{traceback.format_exc()}", flush=True)
        out.append(row)
        model = eng = None
        free_memory(gpu)
    return out


def check_mla(config, sd, tok, prompt_ids, device) -> dict:
    """bf16 greedy tokens (64) of the MLA model: the fused engine vs `mla_generate` and vs the unfused engine;
    the attention kernel vs its fp32 reference on random bf16 inputs at the table's cache lengths."""
    from grpo.adapters import mla_generate
    from grpo.bench import greedy_agreement
    from grpo.engine import EngineSampler
    from grpo.engine.mla_decode import mla_splits, reference_mla_attention, triton_mla_attention
    from grpo.rollout import SamplingParams

    model = build("mla", config, sd, device)
    g = SamplingParams(max_new_tokens=64, temperature=0.0)
    eng = EngineSampler(model, tok, max_batch=len(prompt_ids))
    eos = min(eng.eos_ids)
    fused = eng.generate(prompt_ids, 1, g).completion_ids
    unfused = EngineSampler(model, tok, max_batch=len(prompt_ids), fused=False).generate(prompt_ids, 1, g).completion_ids
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompt_ids], device=device)
    real = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    lat = mla_generate(model.eval(), ids, real, max_new_tokens=64, eos_token_id=eos)[:, width:].cpu()
    fused, unfused, lat = (_cut_after_eos(t, eng.eos_ids) for t in (fused, unfused, lat))
    res = {"check": "mla greedy (64 tokens)", "rows": len(prompt_ids)}
    res["fused_vs_mla_generate"] = greedy_agreement(fused, lat)
    res["fused_vs_unfused_engine"] = greedy_agreement(fused, unfused)
    if device == "cuda":
        m = model.get_decoder().layers[0].self_attn
        gen = torch.Generator(device="cuda").manual_seed(0)
        worst = {}
        for length in (320, 1088, 4160):
            q = torch.randn(128, m.num_heads, m.rank + m.rope_dims, generator=gen, device="cuda", dtype=torch.bfloat16)
            cache = torch.randn(128, length, m.cache_width, generator=gen, device="cuda", dtype=torch.bfloat16)
            mask = torch.zeros(128, length, device="cuda", dtype=torch.bfloat16)
            mask[::3, :17] = float("-inf")
            ref = reference_mla_attention(q.float(), cache.float(), mask.float(), m.scaling, m.num_kv, m.rope_dims)
            got = triton_mla_attention(q, cache, mask, m.scaling, m.num_kv, m.rope_dims,
                                       splits=mla_splits(128, length, q.device))
            worst[length] = round(float((got.float() - ref).abs().max()), 5)
        res["attention_kernel_max_absdiff_vs_fp32"] = worst
    return res


def _cut_after_eos(ids: torch.Tensor, eos_ids) -> torch.Tensor:
    """ids [rows, T] with every token after each row's first EOS set to -1 (the engine pads finished rows,
    mla_generate repeats EOS: compared up to the EOS only)."""
    is_eos = torch.isin(ids, torch.tensor(sorted(eos_ids)))
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return ids.masked_fill(after, -1)


def check_moe(config, sd, tok, prompt_ids, device) -> dict:
    """bf16 greedy tokens (64) and recorded routes of the MoE model, fused engine vs unfused engine."""
    from grpo.adapters import routing_replay
    from grpo.bench import greedy_agreement
    from grpo.engine import EngineSampler
    from grpo.rollout import SamplingParams

    model = build("moe", config, sd, device)
    g = SamplingParams(max_new_tokens=64, temperature=0.0, min_new_tokens=64)
    outs = []
    for fused in ("auto", False):
        with routing_replay(model, "record") as rec:
            b = EngineSampler(model, tok, max_batch=len(prompt_ids), fused=fused).generate(prompt_ids, 1, g)
        outs.append((b.completion_ids, rec[0]))
    (a, ra), (b, rb) = outs
    same_rows, prefix = greedy_agreement(a, b)
    agree = []  # route sets equal, over each row's prompt and the tokens both engines fed alike
    for i, p in enumerate(prompt_ids):
        n = len(p) + int((a[i] == b[i]).long().cumprod(0).sum()) - 1
        sa, sb = ra.routes[i, :n].sort(-1).values, rb.routes[i, :n].sort(-1).values
        agree.append((sa == sb).all(-1).float().mean())
    return {"check": "moe greedy (64 tokens)", "rows": len(prompt_ids), "fused_vs_unfused_engine": (same_rows, prefix),
            "route_sets_equal_fraction": round(float(torch.stack(agree).mean()), 4)}


def print_table(rows: list[dict], device: str, args) -> None:
    dtype = "fp32" if device == "cpu" else "bf16"
    print(f"\nrollout engine, {rows[0]['rows']} rows ({rows[0]['rows'] // args.group} prompts x G={args.group}), every "
          f"completion T new tokens, temperature 1, {dtype}; {device}, {time.strftime('%Y-%m-%d')}")
    ts = args.tokens
    print("| model | KV bytes/token | " + " | ".join(f"tok/s T={t:,}" for t in ts) + " |\n|---|---|"
          + "---|" * len(ts))
    cell = lambda r, t: f"{r['tok_s'][t]:,.0f}" if t in r["tok_s"] else "failed"  # noqa: E731
    for r in rows:
        print(f"| {r['model']} | {r.get('kv_bytes_per_token', 0):,} | " + " | ".join(cell(r, t) for t in ts) + " |")
    dense = next((r for r in rows if r["model"] == "dense" and "kv_bytes_per_token" in r), None)
    for r in rows:
        if dense is not None and r is not dense and "kv_bytes_per_token" in r:
            print(f"| {r['model']} / dense | {r['kv_bytes_per_token'] / dense['kv_bytes_per_token']:.3f} | "
                  + " | ".join(f"{r['tok_s'][t] / dense['tok_s'][t]:.2f}x" if t in r["tok_s"] and t in dense["tok_s"]
                               else "-" for t in ts) + " |")
    for r in rows:
        if "hf_generate_tok_s" in r:
            (t, hf), = r["hf_generate_tok_s"].items()
            print(f"{r['model']}: HF generate {hf:,.0f} tok/s at T={t}; engine / HF = {r['tok_s'][t] / hf:.2f}x")


def run(args) -> dict:
    """The section: the table, then the checks. Returns everything printed, for the JSON."""
    from grpo.std_step import arithmetic_rows, chat_prompt_ids

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    config, sd, tok = weights(args)
    prompt_ids = chat_prompt_ids(tok, arithmetic_rows(args.prompts))
    rows = bench_models(args, config, sd, tok, prompt_ids, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print_table(rows, name, args)
    checks = []
    if not args.skip_checks:
        for fn in (check_mla, check_moe):
            try:
                checks.append(fn(config, sd, tok, prompt_ids, device))
            except Exception as e:  # noqa: BLE001 - reported, the other check still runs
                checks.append({"check": fn.__name__, "error": f"{type(e).__name__}: {e}"})
                print(traceback.format_exc(), flush=True)
            print(" ", json.dumps(checks[-1]), flush=True)
    return {"device": name, "rows": rows, "checks": checks}


def add_arguments(p: argparse.ArgumentParser, prefix: str = "--mla-moe-") -> None:
    p.add_argument(prefix + "tokens", dest="mm_tokens", default="256,1024,4096",
                   help="new tokens per completion, comma-separated (the MLA/MoE section)")
    p.add_argument(prefix + "models", dest="mm_models", default="dense,mla,moe",
                   help="rows of the MLA/MoE section: dense, mla, moe, mla+moe")


def section_args(args) -> argparse.Namespace:
    """The section's options from grpo.bench's (or this module's) parsed arguments."""
    return argparse.Namespace(gguf_dir=getattr(args, "gguf_dir", None), tiny=getattr(args, "cpu_tiny", False),
                              tokens=[int(t) for t in args.mm_tokens.split(",")],
                              models=args.mm_models.split(","), prompts=getattr(args, "mm_prompts", 16),
                              group=getattr(args, "group", 8), skip_hf=getattr(args, "skip_hf", False),
                              skip_checks=getattr(args, "skip_checks", False))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf-dir", default=None)
    p.add_argument("--cpu-tiny", action="store_true", help="grpo.bench's tiny Llama on CPU (tests)")
    p.add_argument("--prompts", dest="mm_prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--skip-hf", action="store_true", help="no HF generate row for the MoE model")
    p.add_argument("--skip-checks", action="store_true")
    p.add_argument("--json", default=None)
    add_arguments(p, prefix="--")
    args = p.parse_args(argv)
    out = run(section_args(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

"""Decode-step kernels at std-step shapes on a GPU, timed as the engine runs them (CUDA graphs, cold caches).

    python tools/decode_kernels_tune.py                       # attention + head/sampler kernels
    python tools/decode_kernels_tune.py --gguf-dir /tmp/smollm2   # + whole std-step rollouts, engine variants

1. Decode attention with a cache per layer (30 layers of [128 rows, 3 KV heads, 320 slots, 64]), one graph
   of 30 calls walking the layers: the K/V reads come from HBM as in a real step (tools/decode_attn_tune.py
   reuses one cache, which stays in the 50 MB L2 and flatters small launches). µs per call, by length.
2. The end of a decode step: final RMSNorm + LM head + draw + bookkeeping, unfused (compiled RMSNorm,
   cuBLAS head, compiled `sample_tokens`, the engine's commit ops) against grpo.engine.fused_sampling's two
   kernels, per launch configuration. µs per step.
3. With --gguf-dir: EngineSampler.generate for 16 prompts x 8 samples x 256 tokens (min_new_tokens = 256),
   per variant (fused sampling or not, attention length bucket), seconds (min of 3 after a warm-up call).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_attn_tune import time_us  # noqa: E402 - the CUDA-graph timing of the other tuning scripts
from grpo.engine import decode_attention as da  # noqa: E402
from grpo.engine import fused_sampling as fs  # noqa: E402
from grpo.engine.ops import rms_norm, sample_tokens  # noqa: E402


def graph_us(fn, calls: int) -> float:
    """Mean µs per call of fn() (which makes `calls` calls) recorded once in a CUDA graph, replayed 10 times."""
    return time_us(fn, reps=10, repeat=1, calls=calls)


def layer_caches(layers: int):
    """Queries and a K/V cache per layer at std-step shapes ([128 rows, 3 KV heads, 320 slots, 64]) and a
    mask with 20 slots of left padding: (qs, ks, vs, mask)."""
    n, hkv, rep, d, slots = 128, 3, 3, 64, 320
    dev, dt = "cuda", torch.bfloat16
    qs = [torch.randn(n, hkv, rep, d, device=dev, dtype=dt) for _ in range(layers)]
    ks = [torch.randn(n, hkv, slots, d, device=dev, dtype=dt) for _ in range(layers)]
    vs = [torch.randn(n, hkv, slots, d, device=dev, dtype=dt) for _ in range(layers)]
    mask = torch.zeros(n, slots, device=dev, dtype=dt)
    mask[:, :20] = float("-inf")
    return qs, ks, vs, mask


def attention(layers: int = 30):
    qs, ks, vs, mask = layer_caches(layers)
    print(f"1. decode attention, {layers} layer caches, µs per call", flush=True)
    for length in (64, 192, 320):
        def run(**kw):
            for q, k, v in zip(qs, ks, vs):
                da.triton_decode_attention(q, k[:, :, :length], v[:, :, :length], mask[:, :length], 0.125, **kw)
        res = []
        for bn, w, st in itertools.product((32, 64, 128), (1, 2, 4), (2, 3)):
            try:
                res.append((graph_us(lambda: run(block_n=bn, num_warps=w, num_stages=st), layers), bn, w, st))
            except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped
                print(f"  block_n {bn} warps {w} stages {st}: {type(e).__name__}")
        res.sort()
        default = graph_us(lambda: run(), layers)
        print(f"  length {length}: default {default:.2f}; best " +
              ", ".join(f"{t:.2f} (block_n {bn}, warps {w}, stages {st})" for t, bn, w, st in res[:3]), flush=True)


def attention_variants(layers: int = 30):
    from attn_variants import attention as variant

    qs, ks, vs, mask = layer_caches(layers)
    print("1b. decode attention variants (tools/attn_variants.py), µs per call", flush=True)
    for length in (64, 192, 320):
        ref = da.triton_decode_attention(qs[0], ks[0][:, :, :length], vs[0][:, :, :length], mask[:, :length], 0.125)
        base = graph_us(lambda: [da.triton_decode_attention(q, k[:, :, :length], v[:, :, :length],
                                                            mask[:, :length], 0.125) for q, k, v in zip(qs, ks, vs)],
                        layers)
        res = []
        for split, bn, w in itertools.product((1, 2, 4, 8), (32, 64), (1, 2, 4)):
            if split > 1 and length // split < 16:
                continue
            out = variant(qs[0], ks[0][:, :, :length], vs[0][:, :, :length], mask[:, :length], 0.125, bn, w, 3, split)
            err = float((out.float() - ref.float()).abs().max())
            t = graph_us(lambda: [variant(q, k[:, :, :length], v[:, :, :length], mask[:, :length], 0.125, bn, w, 3,
                                          split) for q, k, v in zip(qs, ks, vs)], layers)
            res.append((t, split, bn, w, err))
        res.sort()
        print(f"  length {length}: current {base:.2f}; " + ", ".join(
            f"{t:.2f} (split {sp}, block_n {bn}, warps {w}, err {e:.1e})" for t, sp, bn, w, e in res[:5]), flush=True)
        one = [r for r in res if r[1] == 1][0]
        print(f"    best unsplit (K and V loaded together): {one[0]:.2f} (block_n {one[2]}, warps {one[3]})", flush=True)


def head(vocab: int = 49152, hidden: int = 576, n: int = 128, max_new: int = 256):
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(n, hidden, device=dev, dtype=dt)
    g = 1 + 0.05 * torch.randn(hidden, device=dev, dtype=dt)
    w = 0.05 * torch.randn(vocab, hidden, device=dev, dtype=dt)
    eos = torch.zeros(vocab, dtype=torch.bool, device=dev)
    eos[2] = True
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    tok = torch.zeros(n, dtype=torch.long, device=dev)
    pos = torch.zeros(n, dtype=torch.long, device=dev)
    mask = torch.zeros(n, 320, device=dev, dtype=dt)
    out_tok = torch.zeros(n, max_new, dtype=torch.long, device=dev)
    out_logp = torch.zeros(n, max_new, device=dev)
    counters = torch.zeros(2, dtype=torch.long, device=dev)
    slot, col = counters[0:1], counters[1:2]
    seed = torch.zeros(1, dtype=torch.long, device=dev)
    c_rms, c_sample = torch.compile(rms_norm, dynamic=False), torch.compile(sample_tokens, dynamic=False)

    def unfused():
        h = c_rms(x, g, 1e-5)
        logits = F.linear(h, w)
        banned = eos[None] & (col < max_new)[:, None]
        t, lp = c_sample(logits, 1.0, 0, 1.0, banned)
        t = torch.where(done, 0, t)
        lp = torch.where(done, 0.0, lp)
        out_tok.index_copy_(1, col, t[:, None])
        out_logp.index_copy_(1, col, lp[:, None])
        done.logical_or_(eos[t])
        tok.copy_(t)
        col.add_(1)
        pos.add_(1)
        slot.add_(1)
        mask.index_fill_(1, slot, 0.0)

    def fused(**kw):
        pf, pi = fs.head_partials(x, g, 1e-5, w, 1.0, seed, col, ban=eos, min_new=max_new, **kw)
        fs.commit(pf, pi, eos, done, tok, pos, mask, out_tok, out_logp, slot, col, 0)
        counters.add_(1)

    def steps(fn, k=30):
        def run():
            counters.zero_()
            for _ in range(k):
                fn()
        return run

    print("2. final norm + LM head + draw + bookkeeping, µs per step", flush=True)
    print(f"  unfused: {graph_us(steps(unfused), 30):.1f}", flush=True)
    res = []
    for bm, bv, bk, w_, st in itertools.product((32, 64, 128), (64, 128), (32, 64), (4, 8), (3,)):
        try:
            res.append((graph_us(steps(lambda: fused(block_m=bm, block_v=bv, block_k=bk, num_warps=w_,
                                                     num_stages=st)), 30), bm, bv, bk, w_, st))
        except Exception as e:  # noqa: BLE001
            print(f"  {bm} {bv} {bk} {w_} {st}: {type(e).__name__}")
    pf, pi = fs.head_partials(x, g, 1e-5, w, 1.0, seed, col, ban=eos, min_new=max_new)
    print(f"  head_partials alone: T 1 {graph_us(steps(lambda: fs.head_partials(x, g, 1e-5, w, 1.0, seed, col, ban=eos, min_new=max_new)), 30):.1f}, "
          f"T 0 (no noise) {graph_us(steps(lambda: fs.head_partials(x, g, 1e-5, w, 0.0, seed, col)), 30):.1f}, "
          f"10 Philox rounds {graph_us(steps(lambda: fs.head_partials(x, g, 1e-5, w, 1.0, seed, col, rounds=10)), 30):.1f}; "
          f"commit alone {graph_us(steps(lambda: fs.commit(pf, pi, eos, done, tok, pos, mask, out_tok, out_logp, slot, col, 0)), 30):.1f}; "
          f"cuBLAS head GEMM alone {graph_us(steps(lambda: F.linear(x, w)), 30):.1f}", flush=True)
    res.sort()
    print(f"  fused default: {graph_us(steps(fused), 30):.1f}; best " + ", ".join(
        f"{t:.1f} (block_m {bm}, block_v {bv}, block_k {bk}, warps {w_}, stages {st})"
        for t, bm, bv, bk, w_, st in res[:5]), flush=True)


def rollouts(gguf_dir: str):
    from types import SimpleNamespace

    from grpo.std_step import arithmetic_rows, build_model, chat_prompt_ids, load_weights
    from grpo.engine import EngineSampler
    from grpo.rollout import SamplingParams

    config, sd, tok = load_weights(SimpleNamespace(gguf_dir=gguf_dir))
    model = build_model(config, sd, torch.bfloat16, "cuda").train()
    prompts = chat_prompt_ids(tok, arithmetic_rows(16))
    params = SamplingParams(max_new_tokens=256, temperature=1.0, min_new_tokens=256)
    print("3. std-step rollout (16 x 8 x 256 tokens), seconds", flush=True)
    for name, kw in (("fused sampling, bucket 64", {}), ("unfused sampling, bucket 64", dict(fused_sampling=False)),
                     ("fused sampling, bucket 32", dict(bucket=32)), ("fused sampling, bucket 16", dict(bucket=16))):
        eng = EngineSampler(model, tok, max_batch=128, max_seq_len=4096, **kw)
        times = []
        for _ in range(4):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = eng.generate(prompts, 8, params)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        print(f"  {name}: {min(times[1:]):.4f} (all {[round(t, 4) for t in times]}); "
              f"mean sampled logprob {float(out.logprobs.mean()):.4f}", flush=True)
        eng.release()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf-dir", default=None)
    p.add_argument("--only", default="head,attention,variants,rollouts",
                   help="comma-separated sections: head, attention, variants, rollouts (needs --gguf-dir)")
    a = p.parse_args()
    only = set(a.only.split(","))
    if "head" in only:
        head()
    if "attention" in only:
        attention()
    if "variants" in only:
        attention_variants()
    if a.gguf_dir and "rollouts" in only:
        rollouts(a.gguf_dir)


if __name__ == "__main__":
    main()

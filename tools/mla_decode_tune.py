"""MLA decode kernels (grpo.engine.mla_decode) against the dense ones at std-step shapes, timed in CUDA graphs
over 30 layers' caches and weights (cold in L2, as in a real step). Not run yet: written without a GPU.

    python tools/mla_decode_tune.py [--lengths 320,1088,4160] [--quick]

1. Attention, µs per layer call at each cache length: the dense Triton decode attention on [128 rows, 3 KV
   heads, L, 64] K and V, and the MLA kernel on [128 rows, L, 64 + 3·8] latent rows, at its defaults
   (splits from `mla_splits`) and over block_n x warps x stages x splits; with the bytes each reads, as GB/s.
2. Projections, µs per layer call: norm_qkv_rope (dense q/k/v) against norm_mla_proj (absorbed q, latent,
   rotary q and k), SmolLM2-135M shapes, over a few launch configurations.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_attn_tune import time_us  # noqa: E402
from grpo.engine import decode_attention as da  # noqa: E402
from grpo.engine import fused_decode as fd  # noqa: E402
from grpo.engine import mla_decode as md  # noqa: E402

N, HQ, HKV, D, R, RD, HIDDEN, LAYERS = 128, 9, 3, 64, 64, 8, 576, 30
DEV, DT = "cuda", torch.bfloat16


def graph_us(fn) -> float:
    return time_us(fn, reps=10, repeat=1, calls=LAYERS)


def attention(lengths, quick: bool):
    print("1. attention, µs per layer call (GB/s of cache read)", flush=True)
    for length in lengths:
        mask = torch.zeros(N, length, device=DEV, dtype=DT)
        mask[:, :20] = float("-inf")
        qs = [torch.randn(N, HKV, HQ // HKV, D, device=DEV, dtype=DT) for _ in range(LAYERS)]
        kv = [torch.randn(2, N, HKV, length, D, device=DEV, dtype=DT) for _ in range(LAYERS)]
        dense = graph_us(lambda: [da.triton_decode_attention(q, c[0], c[1], mask, 0.125) for q, c in zip(qs, kv)])
        dense_bytes = 2 * N * HKV * length * D * 2
        del qs, kv
        ql = [torch.randn(N, HQ, R + RD, device=DEV, dtype=DT) for _ in range(LAYERS)]
        caches = [torch.randn(N, length, R + HKV * RD, device=DEV, dtype=DT) for _ in range(LAYERS)]
        mla_bytes = N * length * (R + HKV * RD) * 2

        def run(**kw):
            for q, c in zip(ql, caches):
                md.triton_mla_attention(q, c, mask, 0.125, HKV, RD, **kw)

        default_splits = md.mla_splits(N, length, torch.device(DEV))
        default = graph_us(lambda: run(splits=default_splits))
        print(f"  L={length}: dense {dense:.2f} ({dense_bytes / dense / 1e3:.0f}); MLA default (splits "
              f"{default_splits}) {default:.2f} ({mla_bytes / default / 1e3:.0f})", flush=True)
        grid = itertools.product((32, 64) if quick else (32, 64, 128), (4,) if quick else (2, 4, 8),
                                 (2, 3) if quick else (2, 3, 4), sorted({1, 2, 4, 8, default_splits}))
        res = []
        for bn, w, st, sp in grid:
            try:
                res.append((graph_us(lambda: run(splits=sp, block_n=bn, num_warps=w, num_stages=st)), bn, w, st, sp))
            except Exception as e:  # noqa: BLE001 - a configuration that does not compile is skipped
                print(f"    block_n {bn} warps {w} stages {st} splits {sp}: {type(e).__name__}")
        res.sort()
        print("    best: " + "; ".join(f"{t:.2f} (block_n {bn}, warps {w}, stages {st}, splits {sp})"
                                    for t, bn, w, st, sp in res[:4]), flush=True)
        del ql, caches
        torch.cuda.empty_cache()


def projections(quick: bool):
    print("2. projections, µs per layer call", flush=True)
    slots = 512
    x = torch.randn(N, HIDDEN, device=DEV, dtype=DT)
    g = torch.ones(HIDDEN, device=DEV, dtype=DT)
    pos = torch.randint(0, slots, (N,), device=DEV)
    slot = torch.tensor([300], device=DEV)
    inv = 1.0 / (100000 ** (torch.arange(0, D, 2, device=DEV).float() / D))
    emb = torch.outer(torch.arange(slots, device=DEV).float(), inv)
    cos, sin = torch.cat([emb, emb], -1).cos().to(DT), torch.cat([emb, emb], -1).sin().to(DT)
    w = [[torch.randn(h * D, HIDDEN, device=DEV, dtype=DT) * 0.02 for h in (HQ, HKV, HKV)] for _ in range(LAYERS)]
    kc = [torch.zeros(2, N, HKV, slots, D, device=DEV, dtype=DT) for _ in range(LAYERS)]
    dense = graph_us(lambda: [fd.norm_qkv_rope(x, g, 1e-5, *ws, None, None, None, cos, sin, pos, slot, c[0], c[1])
                              for ws, c in zip(w, kc)])
    print(f"  norm_qkv_rope {dense:.2f}", flush=True)
    del w, kc
    rows = (HQ + 1) * R + (HQ + HKV) * RD
    wp = [torch.randn(rows, HIDDEN, device=DEV, dtype=DT) * 0.02 for _ in range(LAYERS)]
    pairs = torch.arange(RD // 2, device=DEV).repeat(HKV, 1)
    mc = [torch.zeros(N, slots, R + HKV * RD, device=DEV, dtype=DT) for _ in range(LAYERS)]
    res = []
    for bm, bn, bk, nw, st in ([(16, 64, 32, 4, 4)] if quick else
                               itertools.product((16, 32), (32, 64), (32, 64), (2, 4), (3, 5))):
        def run():
            for wl, c in zip(wp, mc):
                md.norm_mla_proj(x, g, 1e-5, wl, None, pairs, cos, sin, pos, slot, c, HQ, R, RD, block_m=bm,
                                 block_n=bn, block_k=bk, num_warps=nw, num_stages=st)
        try:
            res.append((graph_us(run), bm, bn, bk, nw, st))
        except Exception as e:  # noqa: BLE001
            print(f"    {bm, bn, bk, nw, st}: {type(e).__name__}")
    res.sort()
    print("  norm_mla_proj best: " + "; ".join(f"{t:.2f} (block_m {bm}, block_n {bn}, block_k {bk}, warps {nw}, "
                                              f"stages {st})" for t, bm, bn, bk, nw, st in res[:4]), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="320,1088,4160")
    ap.add_argument("--quick", action="store_true", help="a few configurations only")
    args = ap.parse_args()
    attention([int(x) for x in args.lengths.split(",")], args.quick)
    projections(args.quick)


if __name__ == "__main__":
    main()

"""The fused decode step's GEMM kernels with cold weights, as a real decode step runs them.

    python tools/decode_layer_tune.py                   # SmolLM2-135M shapes: 128 rows, H 576, 9/3 heads, I 1536
    python tools/decode_layer_tune.py --layer-only --qkv 16,32,2,3 --gate-up 64,32,64,4,3   # one layer, given configs

tools/fused_decode_tune.py times one weight set again and again, so the weights stay in the 50 MB L2; in a
decode step each layer's weights come from HBM once (30 layers x 7 MB). Here every figure is the mean µs per
call of 30 calls on 30 distinct weight sets, recorded in one CUDA graph (decode_attn_tune.time_us):
  1. norm_qkv_rope (block_m, block_k, warps, stages) and norm_gate_up (block_m, block_n, block_k, warps,
     stages) per launch configuration, the engine's defaults marked *,
  2. the o_proj / down residual GEMMs (cuBLAS in-place addmm, as the engine runs them),
  3. the whole layer (the five launches, attention at 192 slots), with the defaults or --qkv / --gate-up.

Measured on an H100 (device tool, 2026-11-24): norm_qkv_rope 9.55 µs at the former default (16, 32, 2, 3),
7.33 at (16, 32, 2, 5); norm_gate_up 8.89 at (64, 32, 64, 4, 3), 7.79 at (64, 32, 32, 4, 5); cuBLAS o_proj
3.4, down 5.2 (a Triton GEMM with the residual add in its epilogue: o_proj 3.0, down 5.3 at best, not used).
"""
import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decode_attn_tune import time_us  # noqa: E402 - CUDA-graph timing shared by the tuning scripts

from grpo.engine import fused_decode as fd  # noqa: E402
from grpo.engine.decode_attention import triton_decode_attention  # noqa: E402


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layer-only", action="store_true", help="only section 3")
    p.add_argument("--qkv", type=ints, default=None, help="block_m,block_k,warps,stages for section 3")
    p.add_argument("--gate-up", type=ints, default=None, help="block_m,block_n,block_k,warps,stages for section 3")
    args = p.parse_args()
    n, hidden, hq, hkv, d, inter, slots, layers = 128, 576, 9, 3, 64, 1536, 320, 30
    dev, dt = "cuda", torch.bfloat16
    r = lambda *s: 0.05 * torch.randn(*s, device=dev, dtype=dt)  # noqa: E731
    x, g = r(n, hidden), 1 + r(hidden)
    W = [dict(q=r(hq * d, hidden), k=r(hkv * d, hidden), v=r(hkv * d, hidden), o=r(hidden, hq * d),
              g=r(inter, hidden), u=r(inter, hidden), d=r(hidden, inter),
              kc=torch.zeros(n, hkv, slots, d, device=dev, dtype=dt),
              vc=torch.zeros(n, hkv, slots, d, device=dev, dtype=dt)) for _ in range(layers)]
    cos_t, sin_t = r(slots, d), r(slots, d)
    pos = torch.randint(0, slots, (n,), device=dev)
    slot = torch.tensor([150], device=dev)
    mask = torch.zeros(n, slots, device=dev, dtype=dt)
    a_in, act_in = r(n, hq * d), r(n, inter)

    def per_layer(fn):
        return time_us(lambda: [fn(w) for w in W], reps=10, repeat=1, calls=layers)

    qd = tuple(fd.QKV_CONFIG[k] for k in ("block_m", "block_k", "num_warps", "num_stages"))
    gd = tuple(fd.GATE_UP_CONFIG[k] for k in ("block_m", "block_n", "block_k", "num_warps", "num_stages"))
    if not args.layer_only:
        print("1. fused kernels, cold weights, µs per call", flush=True)
        for cfg in itertools.product((16, 32), (32, 64), (2, 4), (3, 4, 5, 6)):
            try:
                t = per_layer(lambda L: fd.norm_qkv_rope(x, g, 1e-5, L["q"], L["k"], L["v"], None, None, None,
                                                          cos_t, sin_t, pos, slot, L["kc"], L["vc"], *cfg))
            except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped
                print(f"  qkv {cfg}: failed {type(e).__name__}")
                continue
            print(f"  qkv {cfg}: {t:5.2f}{'*' if cfg == qd else ''}", flush=True)
        for cfg in itertools.product((32, 64), (32, 64), (32, 64), (4,), (3, 4, 5)):
            try:
                t = per_layer(lambda L: fd.norm_gate_up(x, g, 1e-5, L["g"], L["u"], *cfg))
            except Exception as e:  # noqa: BLE001
                print(f"  gate_up {cfg}: failed {type(e).__name__}")
                continue
            print(f"  gate_up {cfg}: {t:5.2f}{'*' if cfg == gd else ''}", flush=True)
        print("2. residual GEMMs (cuBLAS addmm), cold weights, µs per call", flush=True)
        y = torch.empty_like(x)
        print(f"  o_proj {per_layer(lambda L: y.addmm_(a_in, L['o'].t())):5.2f} "
              f"down {per_layer(lambda L: y.addmm_(act_in, L['d'].t())):5.2f}", flush=True)

    qc, gc = args.qkv or qd, args.gate_up or gd
    print(f"3. whole layer, qkv {qc}, gate_up {gc}, attention at 192 slots, µs per layer", flush=True)

    def layer(L):
        q = fd.norm_qkv_rope(x, g, 1e-5, L["q"], L["k"], L["v"], None, None, None, cos_t, sin_t, pos, slot,
                             L["kc"], L["vc"], *qc)
        a = triton_decode_attention(q.view(n, hkv, hq // hkv, d), L["kc"][:, :, :192], L["vc"][:, :, :192],
                                    mask[:, :192], 0.125)
        x.addmm_(a.reshape(n, -1), L["o"].t())
        x.addmm_(fd.norm_gate_up(x, g, 1e-5, L["g"], L["u"], *gc), L["d"].t())

    print(f"  {per_layer(layer):6.2f}", flush=True)


if __name__ == "__main__":
    main()

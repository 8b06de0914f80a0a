"""Time the engine's fused decode kernels against the unfused ops they replace, at std-step shapes on a GPU.

    python tools/fused_decode_tune.py         # SmolLM2-135M shapes: 128 rows, H 576, 9/3 heads of 64, I 1536

Unfused per layer (engine before grpo.engine.fused_decode): RMSNorm (compiled) + three projections +
RoPE (compiled) + two cache writes; RMSNorm + gate/up projections + SiLU·up (compiled); residual adds.
Each figure is the mean of 30 calls replayed in a CUDA graph (as the engine runs them), in µs.
"""
import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from decode_attn_tune import time_us  # noqa: E402 - the same CUDA-graph timing as the attention tuner

from grpo.engine.fused_decode import norm_gate_up, norm_qkv_rope
from grpo.engine.ops import add_rms_norm, rms_norm, rope_qk, swiglu


def main():
    n, hidden, hq, hkv, d, inter, slots = 128, 576, 9, 3, 64, 1536, 320
    dev, dt = "cuda", torch.bfloat16
    r = lambda *s: 0.05 * torch.randn(*s, device=dev, dtype=dt)  # noqa: E731
    x, g = r(n, hidden), 1 + r(hidden)
    wq, wk, wv, wo = r(hq * d, hidden), r(hkv * d, hidden), r(hkv * d, hidden), r(hidden, hq * d)
    wg, wu, wd = r(inter, hidden), r(inter, hidden), r(hidden, inter)
    cos_t, sin_t = r(slots, d), r(slots, d)
    pos = torch.randint(0, slots, (n,), device=dev)
    slot = torch.tensor([200], device=dev)
    kc, vc = torch.zeros(n, hkv, slots, d, device=dev, dtype=dt), torch.zeros(n, hkv, slots, d, device=dev, dtype=dt)
    c_rms, c_add, c_rope, c_swi = (torch.compile(f, dynamic=False) for f in (rms_norm, add_rms_norm, rope_qk, swiglu))

    def unfused_qkv():
        h = c_rms(x, g, 1e-5)
        q = F.linear(h, wq).view(n, 1, hq, d)
        k = F.linear(h, wk).view(n, 1, hkv, d)
        v = F.linear(h, wv).view(n, 1, hkv, d)
        cos, sin = cos_t.index_select(0, pos)[:, None, None], sin_t.index_select(0, pos)[:, None, None]
        q, k = c_rope(q, k, cos, sin)
        kc.index_copy_(2, slot, k.transpose(1, 2))
        vc.index_copy_(2, slot, v.transpose(1, 2))

    def unfused_mlp():
        res, h = c_add(x, x, g, 1e-5)
        return F.linear(c_swi(F.linear(h, wg), F.linear(h, wu)), wd)

    y = torch.empty_like(x)
    a_in, act_in = r(n, hq * d), r(n, inter)
    print(f"unfused norm+qkv+rope+cache: {time_us(unfused_qkv):.1f} us")
    print(f"unfused add+norm+gate/up+swiglu+down: {time_us(unfused_mlp):.1f} us")
    print(f"o_proj F.linear + add: {time_us(lambda: x + F.linear(a_in, wo)):.1f} us; "
          f"in-place addmm: {time_us(lambda: y.addmm_(a_in, wo.t())):.1f} us")
    print(f"down F.linear: {time_us(lambda: F.linear(act_in, wd)):.1f} us; "
          f"in-place addmm: {time_us(lambda: y.addmm_(act_in, wd.t())):.1f} us")
    for bm, bk, w, st in itertools.product((16, 32, 64), (32, 64, 128), (2, 4), (2, 3)):
        try:
            t = time_us(lambda: norm_qkv_rope(x, g, 1e-5, wq, wk, wv, None, None, None, cos_t, sin_t, pos, slot,
                                              kc, vc, bm, bk, w, st))
            print(f"  norm_qkv_rope block_m {bm:2d} block_k {bk:3d} warps {w} stages {st}: {t:.1f} us")
        except Exception as e:  # noqa: BLE001 - a config that does not compile is just skipped
            print(f"  norm_qkv_rope block_m {bm} block_k {bk} warps {w} stages {st}: failed {type(e).__name__}")
    for bm, bn, bk, w, st in itertools.product((16, 32, 64), (32, 64, 128), (64,), (2, 4), (2, 3)):
        try:
            t = time_us(lambda: norm_gate_up(x, g, 1e-5, wg, wu, bm, bn, bk, w, st))
            print(f"  norm_gate_up block_m {bm:2d} block_n {bn:3d} block_k {bk} warps {w} stages {st}: {t:.1f} us")
        except Exception as e:  # noqa: BLE001
            print(f"  norm_gate_up block_m {bm} block_n {bn} warps {w} stages {st}: failed {type(e).__name__}")


if __name__ == "__main__":
    main()

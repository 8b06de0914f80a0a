"""Time the engine's decode attention (Triton kernel configs vs SDPA) at std-step shapes on a GPU.

    python tools/decode_attn_tune.py            # 128 rows x 3 KV heads x 3 query heads each, D 64

Each figure is the mean of 30 calls replayed in a CUDA graph (as the engine runs them), in µs per call.
"""
import itertools

import torch

from grpo.engine.decode_attention import _sdpa, triton_decode_attention


def time_us(fn, reps: int = 20, repeat: int = 30, calls: int = 1) -> float:
    """Mean µs per call: fn() recorded `repeat` times in one CUDA graph, replayed `reps` times; fn itself
    makes `calls` calls (e.g. one per layer)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(repeat):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (reps * repeat * calls)


def main():
    n, hkv, rep, d, slots = 128, 3, 3, 64, 320
    q = torch.randn(n, hkv, rep, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(n, hkv, slots, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(n, hkv, slots, d, device="cuda", dtype=torch.bfloat16)
    mask = torch.zeros(n, slots, device="cuda", dtype=torch.bfloat16)
    mask[:, :20] = float("-inf")
    for length in (128, 320):
        kk, vv, mm = k[:, :, :length], v[:, :, :length], mask[:, :length]
        print(f"length {length}: SDPA {time_us(lambda: _sdpa(q, kk, vv, mm, 0.125)):.1f} us")
        for bn, w, st in itertools.product((32, 64, 128), (1, 2, 4, 8), (1, 2, 3)):
            try:
                t = time_us(lambda: triton_decode_attention(q, kk, vv, mm, 0.125, bn, w, st))
            except Exception as e:  # noqa: BLE001 - a config that does not compile is just skipped
                print(f"  block_n {bn} warps {w} stages {st}: failed {type(e).__name__}")
                continue
            print(f"  block_n {bn:3d} warps {w} stages {st}: {t:.1f} us")


if __name__ == "__main__":
    main()

"""Decode-step attention for the engine's static KV cache: one Triton kernel on CUDA, SDPA elsewhere.

At decode time every row has one new query token. With grouped-query attention the `rep` query heads
that share a KV head act as `rep` query positions, so the problem per (row, kv head) is

    out[r] = softmax_j(scale · q[r] · K[j] + mask[j]) · V[j],   r < rep, j < length

with K, V read from the cache [rows, kv_heads, slots, D] and an additive per-row mask over slots
(-inf for left padding and unwritten slots). PyTorch's SDPA picks cuDNN's flash kernel for this on an
H100, which is built for long query blocks: measured 30 µs per layer per step for 128 rows x 3 KV heads
x <= 320 slots (about 0.9 ms of a 2 ms decode step; `python -m grpo.bench --torch-profile`).

The kernel here is flash-decoding without the split: one program per (row, kv head) walks the slots in
blocks of BLOCK_N, keeping the online-softmax running max m, normaliser l and accumulator in fp32
(Milakov & Gimelshein 2018; FlashAttention's recurrence):

    m' = max(m, max_j s_j),  l' = l·e^(m−m') + Σ_j e^(s_j−m'),  acc' = acc·e^(m−m') + Σ_j e^(s_j−m') V_j

and writes acc / l. The `rep` queries are padded to 16 rows so `tl.dot` runs on tensor cores. It reads
each cache slot once, which is the floor for this step (the cache read is the memory traffic).

`decode_attention` dispatches: the kernel for CUDA tensors when Triton is importable, SDPA otherwise
(CPU, or `use_triton=False`). Both take the same arguments and agree to bf16 rounding (tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of PyTorch; CPU builds go without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def triton_available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _decode_attn_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, length, scale,
                            sq_n, sq_h, sq_r, sk_n, sk_h, sk_s, sv_n, sv_h, sv_s, sm_n, so_n, so_h, so_r,
                            REP: tl.constexpr, D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
        n = tl.program_id(0)
        h = tl.program_id(1)
        offs_r = tl.arange(0, BLOCK_R)
        offs_d = tl.arange(0, D)
        offs_s = tl.arange(0, BLOCK_N)
        r_ok = offs_r < REP
        q = tl.load(q_ptr + n * sq_n + h * sq_h + offs_r[:, None] * sq_r + offs_d[None, :],
                    mask=r_ok[:, None], other=0.0)                                   # [BLOCK_R, D]
        m_i = tl.full((BLOCK_R,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_R,), tl.float32)
        acc = tl.zeros((BLOCK_R, D), tl.float32)
        k_base = k_ptr + n * sk_n + h * sk_h
        v_base = v_ptr + n * sv_n + h * sv_h
        for start in range(0, length, BLOCK_N):
            cols = start + offs_s
            c_ok = cols < length
            k = tl.load(k_base + cols[:, None] * sk_s + offs_d[None, :], mask=c_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale                                       # [BLOCK_R, BLOCK_N] fp32
            bias = tl.load(mask_ptr + n * sm_n + cols, mask=c_ok, other=float("-inf")).to(tl.float32)
            s = s + bias[None, :]
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked block so far
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + cols[:, None] * sv_s + offs_d[None, :], mask=c_ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(out_ptr + n * so_n + h * so_h + offs_r[:, None] * so_r + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=r_ok[:, None])


def _sdpa(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], scale=scale)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                     use_triton: bool = True, block_n: int = 64) -> torch.Tensor:
    """q [N, Hkv, R, D]; k, v [N, Hkv, L, D] (cache views, last dim contiguous); mask [N, L] additive
    (views with a unit last stride are fine). Returns [N, Hkv, R, D] in q's dtype."""
    rep, d = q.shape[2:]
    fits = (use_triton and triton is not None and q.is_cuda and d in (16, 32, 64, 128, 256) and rep <= 64
            and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1 and mask.stride(-1) == 1)
    if not fits:
        return _sdpa(q, k, v, mask, scale)
    return triton_decode_attention(q, k, v, mask, scale, block_n)


def triton_decode_attention(q, k, v, mask, scale: float, block_n: int = 64, num_warps: int | None = None,
                            num_stages: int = 3) -> torch.Tensor:
    """The Triton kernel itself, no dispatch (tests run it on CPU under TRITON_INTERPRET=1).

    Defaults from `tools/decode_attn_tune.py` on an H100 (128 rows x 3 KV heads x 3 queries, D 64):
    one warp, 3 stages, 64-slot blocks: 4.8 µs at 128 slots and 7.5 µs at 320 (SDPA: 13.6 and 26.4;
    4 warps: 5.5 and 9.5). With a cache per layer, as in a real step (the K/V come from HBM, not L2;
    `tools/decode_kernels_tune.py`, 2026-11-24): 5.5 µs at 64 slots, 10.0 at 192, 14.3 at 320, and no
    launch configuration is more than 3% faster. Tried there and slower: splitting the slots over 2-8
    programs with a combine kernel; K and V loaded together; reading only up to the written slot (a
    device scalar as the loop bound: +0.5-1.7 µs); reading each group's prompt slots from its first row
    (per-slot source rows: +1.3-3 µs)."""
    if num_warps is None:
        num_warps = 1 if q.shape[-1] <= 64 else 4
    n, hkv, rep, d = q.shape
    length = k.shape[2]
    out = torch.empty_like(q)
    block_r = max(16, triton.next_power_of_2(rep))
    _decode_attn_kernel[(n, hkv)](
        q, k, v, mask, out, length, scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), mask.stride(0), out.stride(0), out.stride(1), out.stride(2),
        REP=rep, D=d, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)
    return out

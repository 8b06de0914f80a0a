"""Fused decode-step kernels for Llama/Qwen2-style layers: five launches per layer instead of ~13.

At decode time (one token per row, M = 128 rows at std-step) every GEMM is tiny and the step is bound by
kernel launches and their tails, not by FLOPs or bytes (`python -m grpo.bench --torch-profile`: ~4 µs per
kernel, ~13 kernels per layer). One layer here runs as

    1. norm_qkv_rope   (Triton)  h = RMSNorm(x); q, k, v = h·Wq, h·Wk, h·Wv (+ bias); RoPE on q and k;
                                 k and v written into the static cache at this step's slot; q returned
    2. decode attention (Triton, grpo.engine.decode_attention)
    3. x += attn·Woᵀ   (cuBLAS, in-place addmm: the residual add is the GEMM's beta = 1)
    4. norm_gate_up    (Triton)  h = RMSNorm(x); a = SiLU(h·Wg) ⊙ (h·Wu)
    5. x += a·Wdᵀ      (cuBLAS, in-place addmm)

RMSNorm is folded into the GEMM: with r = rsqrt(mean(x²) + eps) a per-row scalar,
RMSNorm(x)·W = r · ((x ⊙ g)·W), so each program accumulates Σ x² next to the dot product over the hidden
dimension (which it walks anyway) and scales the accumulator at the end. RoPE (rotate-half convention)
needs the two halves of each head: a program owns one head and keeps two accumulators, for output columns
[0, D/2) and [D/2, D), so that

    first  = a₁·cos₁ − a₂·sin₁,    second = a₂·cos₂ + a₁·sin₂

without permuting registers. The weights are the model's own [out, in] parameters, read in place (no
fused copy): the kernels take the q/k/v (and gate/up) matrices as separate pointers.

Rounding follows the unfused path to bf16 precision, not bit for bit: the products x ⊙ g are rounded to
the weight dtype before the tensor-core dot, the projections are rounded to it before RoPE / SiLU, as the
HF modules' outputs are. Tests compare with the unfused maths in fp32 and fp16 under Triton's interpreter.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only torch builds ship without triton
    triton = None


if triton is not None:

    @triton.jit
    def normed_tile(x_ptr, g_ptr, rows, ks, r_ok, k_ok, sx_n, DTYPE: tl.constexpr):
        """The RMSNorm-folded GEMM's operand for columns `ks` of `rows`: (x ⊙ g) in DTYPE for the dot, and
        each row's Σ x² over these columns in fp32 (the caller sums them over the hidden dimension and scales
        its accumulator by rsqrt(Σ x² / H + eps)). Shared by the fused decode and sampling kernels."""
        x = tl.load(x_ptr + rows[:, None] * sx_n + ks[None, :], mask=r_ok[:, None] & k_ok[None, :],
                    other=0.0).to(tl.float32)
        g = tl.load(g_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        return (x * g[None, :]).to(DTYPE), tl.sum(x * x, axis=1)

    @triton.jit
    def _norm_qkv_rope_kernel(x_ptr, g_ptr, wq_ptr, wk_ptr, wv_ptr, bq_ptr, bk_ptr, bv_ptr,
                              cos_ptr, sin_ptr, pos_ptr, slot_ptr, q_ptr, kc_ptr, vc_ptr,
                              n_rows, eps, sx_n, scs, sq_n, sq_h, skc_n, skc_h, skc_s, svc_n, svc_h, svc_s,
                              HIDDEN: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                              HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        HALF: tl.constexpr = D // 2
        pid_m = tl.program_id(0)
        head = tl.program_id(1)  # [0, HQ) query heads, [HQ, HQ + HKV) keys, then values
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        r_ok = rows < n_rows
        offs_h = tl.arange(0, HALF)
        offs_k = tl.arange(0, BLOCK_K)
        if head < HQ:
            w_base = wq_ptr + head * D * HIDDEN
            b_base = bq_ptr + head * D
        elif head < HQ + HKV:
            w_base = wk_ptr + (head - HQ) * D * HIDDEN
            b_base = bk_ptr + (head - HQ) * D
        else:
            w_base = wv_ptr + (head - HQ - HKV) * D * HIDDEN
            b_base = bv_ptr + (head - HQ - HKV) * D
        acc1 = tl.zeros((BLOCK_M, HALF), tl.float32)
        acc2 = tl.zeros((BLOCK_M, HALF), tl.float32)
        ss = tl.zeros((BLOCK_M,), tl.float32)
        for k0 in range(0, HIDDEN, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < HIDDEN
            xg, sq = normed_tile(x_ptr, g_ptr, rows, ks, r_ok, k_ok, sx_n, wq_ptr.dtype.element_ty)
            ss += sq
            w1 = tl.load(w_base + offs_h[:, None] * HIDDEN + ks[None, :], mask=k_ok[None, :], other=0.0)
            w2 = tl.load(w_base + (offs_h[:, None] + HALF) * HIDDEN + ks[None, :], mask=k_ok[None, :], other=0.0)
            acc1 += tl.dot(xg, tl.trans(w1))
            acc2 += tl.dot(xg, tl.trans(w2))
        r = tl.rsqrt(ss / HIDDEN + eps)
        a1 = acc1 * r[:, None]
        a2 = acc2 * r[:, None]
        if HAS_BIAS:
            a1 += tl.load(b_base + offs_h).to(tl.float32)[None, :]
            a2 += tl.load(b_base + HALF + offs_h).to(tl.float32)[None, :]
        a1 = a1.to(q_ptr.dtype.element_ty).to(tl.float32)  # the projection's output precision
        a2 = a2.to(q_ptr.dtype.element_ty).to(tl.float32)
        if head < HQ + HKV:  # rotate-half RoPE at each row's position
            p = tl.load(pos_ptr + rows, mask=r_ok, other=0)
            c_off = p[:, None] * scs + offs_h[None, :]
            c1 = tl.load(cos_ptr + c_off, mask=r_ok[:, None], other=0.0).to(tl.float32)
            c2 = tl.load(cos_ptr + c_off + HALF, mask=r_ok[:, None], other=0.0).to(tl.float32)
            s1 = tl.load(sin_ptr + c_off, mask=r_ok[:, None], other=0.0).to(tl.float32)
            s2 = tl.load(sin_ptr + c_off + HALF, mask=r_ok[:, None], other=0.0).to(tl.float32)
            o1 = a1 * c1 - a2 * s1
            o2 = a2 * c2 + a1 * s2
        else:
            o1 = a1
            o2 = a2
        if head < HQ:
            out = q_ptr + rows[:, None] * sq_n + head * sq_h
        elif head < HQ + HKV:
            out = kc_ptr + rows[:, None] * skc_n + (head - HQ) * skc_h + tl.load(slot_ptr) * skc_s
        else:
            out = vc_ptr + rows[:, None] * svc_n + (head - HQ - HKV) * svc_h + tl.load(slot_ptr) * svc_s
        tl.store(out + offs_h[None, :], o1.to(q_ptr.dtype.element_ty), mask=r_ok[:, None])
        tl.store(out + HALF + offs_h[None, :], o2.to(q_ptr.dtype.element_ty), mask=r_ok[:, None])

    @triton.jit
    def _norm_gate_up_kernel(x_ptr, g_ptr, wg_ptr, wu_ptr, out_ptr, n_rows, eps, sx_n, so_n,
                             HIDDEN: tl.constexpr, INTER: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        r_ok = rows < n_rows
        c_ok = cols < INTER
        offs_k = tl.arange(0, BLOCK_K)
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        ss = tl.zeros((BLOCK_M,), tl.float32)
        for k0 in range(0, HIDDEN, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < HIDDEN
            xg, sq = normed_tile(x_ptr, g_ptr, rows, ks, r_ok, k_ok, sx_n, wg_ptr.dtype.element_ty)
            ss += sq
            w_off = cols[:, None] * HIDDEN + ks[None, :]
            w_ok = c_ok[:, None] & k_ok[None, :]
            acc_g += tl.dot(xg, tl.trans(tl.load(wg_ptr + w_off, mask=w_ok, other=0.0)))
            acc_u += tl.dot(xg, tl.trans(tl.load(wu_ptr + w_off, mask=w_ok, other=0.0)))
        r = tl.rsqrt(ss / HIDDEN + eps)
        gate = (acc_g * r[:, None]).to(out_ptr.dtype.element_ty).to(tl.float32)
        up = (acc_u * r[:, None]).to(out_ptr.dtype.element_ty).to(tl.float32)
        act = (gate * tl.sigmoid(gate)).to(out_ptr.dtype.element_ty).to(tl.float32) * up
        tl.store(out_ptr + rows[:, None] * so_n + cols[None, :], act.to(out_ptr.dtype.element_ty),
                 mask=r_ok[:, None] & c_ok[None, :])


# Launch configurations for an H100 (128 rows, SmolLM2-135M shapes). tools/fused_decode_tune.py (2026-11-24,
# one weight set, so warm in L2): norm_qkv_rope 6.9 µs where the unfused RMSNorm + 3 GEMMs + RoPE + 2 cache
# writes took 20.6 µs; norm_gate_up 8.0 µs, + the down GEMM 4.5 µs, where add + RMSNorm + 3 GEMMs + SiLU·up
# took 13.5 µs. In a real step each layer's weights come from HBM: tools/decode_layer_tune.py (30 weight
# sets, 2026-11-24) picked deeper pipelines there: norm_qkv_rope 9.55 -> 7.33 µs (3 -> 5 stages), norm_gate_up
# 8.89 -> 7.79 µs (block_k 64 -> 32, 3 -> 5 stages); the tail of each program's K loop waits on HBM.
QKV_CONFIG = dict(block_m=16, block_k=32, num_warps=2, num_stages=5)
GATE_UP_CONFIG = dict(block_m=64, block_n=32, block_k=32, num_warps=4, num_stages=5)


def norm_qkv_rope(x, norm_w, eps: float, wq, wk, wv, bq, bk, bv, cos_table, sin_table, pos, slot, k_cache,
                  v_cache, block_m: int | None = None, block_k: int | None = None, num_warps: int | None = None,
                  num_stages: int | None = None) -> torch.Tensor:
    """x [N, H] (residual stream, un-normed); norm_w [H]; wq [Hq·D, H], wk/wv [Hkv·D, H] (contiguous);
    bq/bk/bv biases or None; cos/sin tables [slots, D]; pos [N] long; slot [1] long; k/v cache
    [rows ≥ N, Hkv, slots, D]. Writes rotated k and v into cache slot `slot` of rows [0, N) and returns
    the rotated queries [N, Hq, D]."""
    cfg = dict(QKV_CONFIG)
    cfg.update({k: v for k, v in dict(block_m=block_m, block_k=block_k, num_warps=num_warps,
                                      num_stages=num_stages).items() if v is not None})
    n, hidden = x.shape
    hkv, d = k_cache.shape[1], k_cache.shape[3]
    hq = wq.shape[0] // d
    q = torch.empty((n, hq, d), dtype=x.dtype, device=x.device)
    has_bias = bq is not None
    bq, bk, bv = (bq, bk, bv) if has_bias else (wq, wk, wv)  # unused pointers when there is no bias
    grid = (triton.cdiv(n, cfg["block_m"]), hq + 2 * hkv)
    _norm_qkv_rope_kernel[grid](
        x, norm_w, wq, wk, wv, bq, bk, bv, cos_table, sin_table, pos, slot, q, k_cache, v_cache,
        n, eps, x.stride(0), cos_table.stride(0), q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), HIDDEN=hidden, HQ=hq, HKV=hkv, D=d, HAS_BIAS=has_bias,
        BLOCK_M=cfg["block_m"], BLOCK_K=cfg["block_k"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return q


def norm_gate_up(x, norm_w, eps: float, wg, wu, block_m: int | None = None, block_n: int | None = None,
                 block_k: int | None = None, num_warps: int | None = None,
                 num_stages: int | None = None) -> torch.Tensor:
    """x [N, H] (un-normed); norm_w [H]; wg, wu [I, H] contiguous -> SiLU(h·Wgᵀ) ⊙ (h·Wuᵀ) [N, I], h = RMSNorm(x)."""
    cfg = dict(GATE_UP_CONFIG)
    cfg.update({k: v for k, v in dict(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=num_warps,
                                      num_stages=num_stages).items() if v is not None})
    n, hidden = x.shape
    inter = wg.shape[0]
    out = torch.empty((n, inter), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, cfg["block_m"]), triton.cdiv(inter, cfg["block_n"]))
    _norm_gate_up_kernel[grid](x, norm_w, wg, wu, out, n, eps, x.stride(0), out.stride(0),
                               HIDDEN=hidden, INTER=inter, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"],
                               BLOCK_K=cfg["block_k"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out


def reference_norm_qkv_rope(x, norm_w, eps, wq, wk, wv, bq, bk, bv, cos_table, sin_table, pos, slot,
                            k_cache, v_cache) -> torch.Tensor:
    """The same maths unfused in float32 (tests): returns q [N, Hq, D] and writes the caches."""
    n = x.shape[0]
    hkv, d = k_cache.shape[1], k_cache.shape[3]
    xf = x.float()
    h = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * norm_w.float()

    def proj(w, b, heads):
        y = h @ w.float().t() + (0 if b is None else b.float())
        return y.to(x.dtype).float().view(n, heads, d)

    q, k, v = proj(wq, bq, wq.shape[0] // d), proj(wk, bk, hkv), proj(wv, bv, hkv)
    cos, sin = cos_table[pos].float()[:, None], sin_table[pos].float()[:, None]

    def rope(t):
        t1, t2 = t.chunk(2, dim=-1)
        return t * cos + torch.cat((-t2, t1), dim=-1) * sin

    s = int(slot[0])
    k_cache[:n, :, s] = rope(k).to(k_cache.dtype)
    v_cache[:n, :, s] = v.to(v_cache.dtype)
    return rope(q).to(x.dtype)


def reference_norm_gate_up(x, norm_w, eps, wg, wu) -> torch.Tensor:
    xf = x.float()
    h = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * norm_w.float()
    gate = (h @ wg.float().t()).to(x.dtype).float()
    up = (h @ wu.float().t()).to(x.dtype).float()
    return (torch.nn.functional.silu(gate).to(x.dtype).float() * up).to(x.dtype)

"""Experimental decode-attention variants, timed by `python tools/decode_kernels_tune.py --only variants` (GPU)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _hoisted(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, length, scale,
             sq_n, sq_h, sq_r, sk_n, sk_h, sk_s, sv_n, sv_h, sv_s, sm_n, so_n, so_h, so_r,
             REP: tl.constexpr, D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
             SPLIT: tl.constexpr, ps_ptr, pm_ptr, pl_ptr):
    """K and V of a block loaded together at the top of the iteration. SPLIT > 1: program (n, h, sp)
    takes slots [sp * chunk, (sp + 1) * chunk) and writes a partial (acc, m, l) for a combine kernel."""
    n = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, D)
    offs_s = tl.arange(0, BLOCK_N)
    r_ok = offs_r < REP
    q = tl.load(q_ptr + n * sq_n + h * sq_h + offs_r[:, None] * sq_r + offs_d[None, :], mask=r_ok[:, None], other=0.0)
    m_i = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_R,), tl.float32)
    acc = tl.zeros((BLOCK_R, D), tl.float32)
    chunk = tl.cdiv(tl.cdiv(length, SPLIT), BLOCK_N) * BLOCK_N
    lo = sp * chunk
    hi = tl.minimum(length, lo + chunk)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_s
        c_ok = cols < hi
        k = tl.load(k_ptr + n * sk_n + h * sk_h + cols[:, None] * sk_s + offs_d[None, :], mask=c_ok[:, None], other=0.0)
        v = tl.load(v_ptr + n * sv_n + h * sv_h + cols[:, None] * sv_s + offs_d[None, :], mask=c_ok[:, None], other=0.0)
        bias = tl.load(mask_ptr + n * sm_n + cols, mask=c_ok, other=float("-inf")).to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale + bias[None, :]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    if SPLIT == 1:
        out = acc / l_i[:, None]
        tl.store(out_ptr + n * so_n + h * so_h + offs_r[:, None] * so_r + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=r_ok[:, None])
    else:
        base = ((n * tl.num_programs(1) + h) * SPLIT + sp) * BLOCK_R
        tl.store(ps_ptr + (base + offs_r[:, None]) * D + offs_d[None, :], acc)
        tl.store(pm_ptr + base + offs_r, m_i)
        tl.store(pl_ptr + base + offs_r, l_i)


@triton.jit
def _combine(out_ptr, ps_ptr, pm_ptr, pl_ptr, so_n, so_h, so_r, REP: tl.constexpr, D: tl.constexpr,
             BLOCK_R: tl.constexpr, SPLIT: tl.constexpr):
    n = tl.program_id(0)
    h = tl.program_id(1)
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, D)
    offs_p = tl.arange(0, SPLIT)
    base = ((n * tl.num_programs(1) + h) * SPLIT + offs_p[:, None]) * BLOCK_R + offs_r[None, :]  # [SPLIT, R]
    m = tl.load(pm_ptr + base)
    l = tl.load(pl_ptr + base)
    big = tl.max(m, axis=0)
    big = tl.where(big == float("-inf"), 0.0, big)
    wgt = tl.exp(m - big[None, :])                                   # [SPLIT, R]
    den = tl.sum(l * wgt, axis=0)
    acc = tl.zeros((BLOCK_R, D), tl.float32)
    for i in tl.static_range(SPLIT):
        b = ((n * tl.num_programs(1) + h) * SPLIT + i) * BLOCK_R
        part = tl.load(ps_ptr + (b + offs_r[:, None]) * D + offs_d[None, :])
        wi = tl.sum(tl.where(offs_p[:, None] == i, wgt, 0.0), axis=0)
        acc += part * wi[:, None]
    out = acc / den[:, None]
    tl.store(out_ptr + n * so_n + h * so_h + offs_r[:, None] * so_r + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=(offs_r < REP)[:, None])


_scratch = {}


def attention(q, k, v, mask, scale, block_n=64, num_warps=1, num_stages=3, split=1):
    n, hkv, rep, d = q.shape
    length = k.shape[2]
    out = torch.empty_like(q)
    block_r = max(16, triton.next_power_of_2(rep))
    key = (n, hkv, split, block_r, d, q.device)
    if key not in _scratch:
        _scratch[key] = (torch.empty(n * hkv * split * block_r * d, device=q.device),
                         torch.empty(n * hkv * split * block_r, device=q.device),
                         torch.empty(n * hkv * split * block_r, device=q.device))
    ps, pm, pl = _scratch[key]
    _hoisted[(n, hkv, split)](q, k, v, mask, out, length, scale,
                              q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                              v.stride(0), v.stride(1), v.stride(2), mask.stride(0), out.stride(0), out.stride(1),
                              out.stride(2), REP=rep, D=d, BLOCK_R=block_r, BLOCK_N=block_n, SPLIT=split,
                              ps_ptr=ps, pm_ptr=pm, pl_ptr=pl, num_warps=num_warps, num_stages=num_stages)
    if split > 1:
        _combine[(n, hkv)](out, ps, pm, pl, out.stride(0), out.stride(1), out.stride(2), REP=rep, D=d,
                           BLOCK_R=block_r, SPLIT=split, num_warps=2)
    return out

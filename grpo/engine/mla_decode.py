"""Decode step of absorbed multi-head latent attention (MLA) on the engine's latent cache: Triton kernels.

The model is grpo.adapters.mla's MLAAttention (MHA2MLA conversion; DeepSeek-V2's absorbed decoding,
arXiv:2405.04434 §2.1.2-2.1.3). Notation: H query heads in n_kv groups of G = H / n_kv, head_dim d,
rope_dims RD rotary dims per KV head (RD = 2m), rank r. Per token and layer the cache holds one row

    cache[row, slot] = [ c (r) | k_rope of KV head 0 (RD) | ... | k_rope of KV head n_kv-1 (RD) ]

(width W = r + n_kv·RD; `MLALatentAttention` allocates it as one tensor). With the up-projections absorbed
(q̃_h = W_uk^gᵀ q_nope,h ∈ R^r, o_h = W_uv^g Σ_j p_hj c_j) the score of head h (group g) on slot j is

    s_hj = scale · (q̃_h · c_j + q_rope,h · k_rope,g,j)

Writing head h's rotary query into the columns of its own group and zeros elsewhere,
q̂_h = [q̃_h | 0 .. q_rope,h .. 0] ∈ R^W, makes that one dot product with the whole cache row: s_hj =
scale · q̂_h · cache[j]. So the H heads of a row are H query rows of one multi-query attention over the
row's cache, whose values are the first r columns of the same rows (FlashMLA's layout, in Triton):

1. `mla_decode_attention` (grid: rows x splits). A program takes all H heads of one row (padded to 16
   query rows for tensor cores) and walks a contiguous range of its slots in blocks of BLOCK_N, reading
   each cache row once per step for all heads, with the online softmax of grpo.engine.decode_attention
   (running max m, normaliser l, accumulator [H, r] in fp32). The rotary query is placed into its
   group's columns when it is loaded (a masked gather), so it is stored compactly as q [N, H, r + RD].
   Splits (flash-decoding, Dao et al. 2023): with S > 1 each program covers 1/S of the slots and writes
   its unnormalised accumulator, m and l; `_combine_kernel` merges them:
       M = max_s m_s,  l = Σ_s l_s e^(m_s − M),  out = Σ_s acc_s e^(m_s − M) / l.
2. `norm_mla_proj` (grid: row blocks x output blocks): RMSNorm folded into one GEMM over the layer's
   concatenated projection [W_qa; W_dkv; W_q,rope; W_k,rope] (grpo.adapters.mla.MLAAttention.
   absorbed_weights: W_qa = W_uk^gᵀ W_q,nope per head), then RoPE on the rotary parts (frequency pair i of
   KV group g is inv_freq[rope_pairs[g, i]]; rotate-half within the RD dims), and the step's c and k_rope
   written into the cache slot. Returns q [N, H, r + RD] = [q̃ | rotated q_rope].

The output projection with W_uv absorbed (W_ouv = W_o · blockdiag_h W_uv^g, [D, H·r]) is one GEMM that
the engine runs as an in-place addmm on the residual stream.

Bytes. A decode step reads W·2 bytes per slot and row (SmolLM2-135M converted at r = 64, RD = 8:
176 B per layer against 768 B of K and V for the dense GQA cache); see grpo/engine/NOTES.md.
`mla_decode_attention` dispatches: the kernel for CUDA tensors when Triton is importable, the same maths
in PyTorch (`reference_mla_attention`) otherwise. Tests run the kernels on CPU under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import functools

import torch

from grpo.engine.fused_decode import triton

if triton is not None:
    import triton.language as tl

    from grpo.engine.fused_decode import normed_tile

    @triton.jit
    def _mla_attn_kernel(q_ptr, c_ptr, mask_ptr, out_ptr, part_ptr, ml_ptr, length, chunk, scale,
                         sq_n, sq_h, sc_n, sc_s, sm_n, so_n, so_h,
                         H: tl.constexpr, G: tl.constexpr, R: tl.constexpr, RD: tl.constexpr,
                         SPLITS: tl.constexpr, BLOCK_H: tl.constexpr, R_P: tl.constexpr, RP: tl.constexpr,
                         BLOCK_N: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)  # row offsets into a large cache pass 2^31 elements
        sp = tl.program_id(1)
        offs_h = tl.arange(0, BLOCK_H)
        offs_r = tl.arange(0, R_P)
        offs_s = tl.arange(0, BLOCK_N)
        h_ok = offs_h < H
        r_ok = offs_r < R
        q_row = q_ptr + n * sq_n + offs_h[:, None] * sq_h
        q_lat = tl.load(q_row + offs_r[None, :], mask=h_ok[:, None] & r_ok[None, :], other=0.0)  # [BLOCK_H, R_P]
        if RD > 0:
            NKV_RD: tl.constexpr = (H // G) * RD
            offs_p = tl.arange(0, RP)
            p_ok = offs_p < NKV_RD
            # head h's rotary query in the columns of its group g = h // G, zeros elsewhere
            own = (offs_p[None, :] // RD == offs_h[:, None] // G) & p_ok[None, :] & h_ok[:, None]
            q_rope = tl.load(q_row + R + offs_p[None, :] % RD, mask=own, other=0.0)       # [BLOCK_H, RP]
        m_i = tl.full((BLOCK_H,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_H,), tl.float32)
        acc = tl.zeros((BLOCK_H, R_P), tl.float32)
        c_base = c_ptr + n * sc_n
        start = sp * chunk
        end = tl.minimum(start + chunk, length)
        for s0 in range(start, end, BLOCK_N):
            cols = s0 + offs_s
            c_ok = cols < end
            lat = tl.load(c_base + cols[:, None] * sc_s + offs_r[None, :], mask=c_ok[:, None] & r_ok[None, :],
                          other=0.0)                                                          # [BLOCK_N, R_P]
            s = tl.dot(q_lat, tl.trans(lat))                                                  # [BLOCK_H, BLOCK_N]
            if RD > 0:
                kr = tl.load(c_base + cols[:, None] * sc_s + R + offs_p[None, :], mask=c_ok[:, None] & p_ok[None, :],
                             other=0.0)                                                       # [BLOCK_N, RP]
                s += tl.dot(q_rope, tl.trans(kr))
            bias = tl.load(mask_ptr + n * sm_n + cols, mask=c_ok, other=float("-inf")).to(tl.float32)
            s = s * scale + bias[None, :]
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # every slot so far masked
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(lat.dtype), lat)
            m_i = m_new
        if SPLITS == 1:
            tl.store(out_ptr + n * so_n + offs_h[:, None] * so_h + offs_r[None, :],
                     (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=h_ok[:, None] & r_ok[None, :])
        else:  # partials [N, SPLITS, H, R] and (m, l) [N, SPLITS, 2, H], fp32
            base = n * SPLITS + sp
            tl.store(part_ptr + (base * H + offs_h[:, None]) * R + offs_r[None, :], acc,
                     mask=h_ok[:, None] & r_ok[None, :])
            tl.store(ml_ptr + base * 2 * H + offs_h, m_i, mask=h_ok)
            tl.store(ml_ptr + base * 2 * H + H + offs_h, l_i, mask=h_ok)

    @triton.jit
    def _combine_kernel(part_ptr, ml_ptr, out_ptr, so_n, so_h, H: tl.constexpr, R: tl.constexpr,
                        SPLITS: tl.constexpr, S_P: tl.constexpr, R_P: tl.constexpr):
        n = tl.program_id(0)
        h = tl.program_id(1)
        offs_s = tl.arange(0, S_P)
        offs_r = tl.arange(0, R_P)
        s_ok = offs_s < SPLITS
        base = n * SPLITS + offs_s
        m = tl.load(ml_ptr + base * 2 * H + h, mask=s_ok, other=float("-inf"))
        l = tl.load(ml_ptr + base * 2 * H + H + h, mask=s_ok, other=0.0)
        big = tl.max(m, axis=0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - big))                                # [S_P]
        acc = tl.load(part_ptr + (base[:, None] * H + h) * R + offs_r[None, :],
                      mask=s_ok[:, None] & (offs_r < R)[None, :], other=0.0)                  # [S_P, R_P]
        out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
        tl.store(out_ptr + n * so_n + h * so_h + offs_r, out.to(out_ptr.dtype.element_ty), mask=offs_r < R)

    @triton.jit
    def _norm_mla_proj_kernel(x_ptr, g_ptr, w_ptr, b_ptr, pairs_ptr, cos_ptr, sin_ptr, pos_ptr, slot_ptr,
                              q_ptr, c_ptr, n_rows, eps, sx_n, scs, sq_n, sq_h, sc_n, sc_s,
                              HIDDEN: tl.constexpr, H: tl.constexpr, G: tl.constexpr, R: tl.constexpr,
                              RD: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, M_P: tl.constexpr):
        PLAIN: tl.constexpr = (H + 1) * R             # absorbed queries, then the latent
        PLAIN_BLOCKS: tl.constexpr = (PLAIN + BLOCK_N - 1) // BLOCK_N
        M: tl.constexpr = RD // 2                     # rotary frequency pairs per head
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        r_ok = rows < n_rows
        c_rows = c_ptr + rows.to(tl.int64)[:, None] * sc_n + tl.load(slot_ptr) * sc_s  # this step's cache slot
        offs_k = tl.arange(0, BLOCK_K)
        if pid_n < PLAIN_BLOCKS:  # plain columns: q̃ of every head, then c (written to the cache)
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            c_ok = cols < PLAIN
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            ss = tl.zeros((BLOCK_M,), tl.float32)
            for k0 in range(0, HIDDEN, BLOCK_K):
                ks = k0 + offs_k
                k_ok = ks < HIDDEN
                xg, sq = normed_tile(x_ptr, g_ptr, rows, ks, r_ok, k_ok, sx_n, w_ptr.dtype.element_ty)
                ss += sq
                w = tl.load(w_ptr + cols[:, None] * HIDDEN + ks[None, :], mask=c_ok[:, None] & k_ok[None, :],
                            other=0.0)
                acc += tl.dot(xg, tl.trans(w))
            a = acc * tl.rsqrt(ss / HIDDEN + eps)[:, None]
            if HAS_BIAS:
                a += tl.load(b_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            a = a.to(q_ptr.dtype.element_ty)
            is_q = cols < H * R
            qc = tl.where(is_q, cols, 0)
            tl.store(q_ptr + rows[:, None] * sq_n + (qc // R)[None, :] * sq_h + (qc % R)[None, :], a,
                     mask=r_ok[:, None] & (is_q & c_ok)[None, :])
            cc = tl.where(is_q, 0, cols - H * R)
            tl.store(c_rows + cc[None, :], a,
                     mask=r_ok[:, None] & (~is_q & c_ok)[None, :])
        else:  # rotary segment: query head seg < H, or KV head seg - H; two half accumulators (rotate-half)
            seg = pid_n - PLAIN_BLOCKS
            offs_m = tl.arange(0, M_P)
            m_ok = offs_m < M
            w_base = w_ptr + (PLAIN + seg * RD) * HIDDEN
            acc1 = tl.zeros((BLOCK_M, M_P), tl.float32)
            acc2 = tl.zeros((BLOCK_M, M_P), tl.float32)
            ss = tl.zeros((BLOCK_M,), tl.float32)
            for k0 in range(0, HIDDEN, BLOCK_K):
                ks = k0 + offs_k
                k_ok = ks < HIDDEN
                xg, sq = normed_tile(x_ptr, g_ptr, rows, ks, r_ok, k_ok, sx_n, w_ptr.dtype.element_ty)
                ss += sq
                w_ok = m_ok[:, None] & k_ok[None, :]
                w1 = tl.load(w_base + offs_m[:, None] * HIDDEN + ks[None, :], mask=w_ok, other=0.0)
                w2 = tl.load(w_base + (offs_m[:, None] + M) * HIDDEN + ks[None, :], mask=w_ok, other=0.0)
                acc1 += tl.dot(xg, tl.trans(w1))
                acc2 += tl.dot(xg, tl.trans(w2))
            r = tl.rsqrt(ss / HIDDEN + eps)
            a1 = acc1 * r[:, None]
            a2 = acc2 * r[:, None]
            if HAS_BIAS:
                b_base = b_ptr + PLAIN + seg * RD
                a1 += tl.load(b_base + offs_m, mask=m_ok, other=0.0).to(tl.float32)[None, :]
                a2 += tl.load(b_base + M + offs_m, mask=m_ok, other=0.0).to(tl.float32)[None, :]
            a1 = a1.to(q_ptr.dtype.element_ty).to(tl.float32)  # the projection's output precision
            a2 = a2.to(q_ptr.dtype.element_ty).to(tl.float32)
            group = tl.where(seg < H, seg // G, seg - H)
            pair = tl.load(pairs_ptr + group * M + offs_m, mask=m_ok, other=0)               # [M_P]
            p = tl.load(pos_ptr + rows, mask=r_ok, other=0)
            t_off = p[:, None] * scs + pair[None, :]
            t_ok = r_ok[:, None] & m_ok[None, :]
            cos = tl.load(cos_ptr + t_off, mask=t_ok, other=0.0).to(tl.float32)  # HF tables: cos[i] == cos[i + d/2]
            sin = tl.load(sin_ptr + t_off, mask=t_ok, other=0.0).to(tl.float32)
            o1 = (a1 * cos - a2 * sin).to(q_ptr.dtype.element_ty)
            o2 = (a2 * cos + a1 * sin).to(q_ptr.dtype.element_ty)
            if seg < H:
                out = q_ptr + rows[:, None] * sq_n + seg * sq_h + R
            else:
                out = c_rows + R + (seg - H) * RD
            tl.store(out + offs_m[None, :], o1, mask=t_ok)
            tl.store(out + M + offs_m[None, :], o2, mask=t_ok)


def _pow2(x: int, floor: int = 16) -> int:
    return max(floor, 1 << max(0, (x - 1).bit_length()))


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def mla_splits(rows: int, length: int, device: torch.device, block_n: int = 64) -> int:
    """Slot splits per row for `triton_mla_attention`: enough programs to give every SM about four
    (one program per row leaves most of the GPU idle below ~100 rows and long caches), but never less
    than 4·block_n slots per split (a split's fixed cost is one write of its partials). Not tuned on a
    GPU yet: `tools/mla_decode_tune.py` measures the alternatives."""
    if device.type != "cuda":
        return 1
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    want = -(-4 * sms // max(rows, 1))
    return max(1, min(want, length // (4 * block_n), 16))


def triton_mla_attention(q, cache, mask, scale: float, num_kv: int, rope_dims: int, splits: int = 1,
                         block_n: int | None = None, num_warps: int | None = None,
                         num_stages: int = 2) -> torch.Tensor:
    """The kernel itself, no dispatch. q [N, H, r + RD] (last dim contiguous); cache [N, L, r + n_kv·RD]
    (a view of the first N rows and L slots; last dim contiguous); mask [N, L] additive (unit last stride).
    Returns the attended latents [N, H, r] in q's dtype."""
    n, h, width = q.shape
    r = width - rope_dims
    length = cache.shape[1]
    if block_n is None:
        block_n = 64 if r <= 128 else 32
    if num_warps is None:
        num_warps = 4 if r <= 128 else 8
    out = torch.empty((n, h, r), dtype=q.dtype, device=q.device)
    per_split = -(-length // splits)
    chunk = -(-per_split // block_n) * block_n  # slots per split, a multiple of block_n
    splits = -(-length // chunk)
    if splits > 1:
        part = torch.empty((n, splits, h, r), dtype=torch.float32, device=q.device)
        ml = torch.empty((n, splits, 2, h), dtype=torch.float32, device=q.device)
    else:
        part = ml = out  # unused
    _mla_attn_kernel[(n, splits)](
        q, cache, mask, out, part, ml, length, chunk, scale, q.stride(0), q.stride(1), cache.stride(0),
        cache.stride(1), mask.stride(0), out.stride(0), out.stride(1),
        H=h, G=h // num_kv, R=r, RD=rope_dims, SPLITS=splits, BLOCK_H=_pow2(h), R_P=_pow2(r),
        RP=_pow2(num_kv * rope_dims), BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)
    if splits > 1:
        _combine_kernel[(n, h)](part, ml, out, out.stride(0), out.stride(1), H=h, R=r, SPLITS=splits,
                                S_P=_pow2(splits, 2), R_P=_pow2(r), num_warps=1 if r <= 128 else 4)
    return out


def reference_mla_attention(q, cache, mask, scale: float, num_kv: int, rope_dims: int) -> torch.Tensor:
    """The same maths in PyTorch (fp32 softmax): q [N, H, r + RD], cache [N, L, r + n_kv·RD], mask [N, L]
    -> [N, H, r] in q's dtype. The CPU path of `mla_decode_attention` and the tests' oracle."""
    n, h, width = q.shape
    r, rd = width - rope_dims, rope_dims
    lat = cache[..., :r]
    scores = torch.einsum("nhr,nlr->nhl", q[..., :r].float(), lat.float())
    if rd:
        kr = cache[..., r:].unflatten(-1, (num_kv, rd)).float()                          # [N, L, n_kv, RD]
        qr = q[..., r:].float().reshape(n, num_kv, h // num_kv, rd)
        scores = scores + torch.einsum("nkgd,nlkd->nkgl", qr, kr).reshape(n, h, -1)
    p = torch.softmax(scores * scale + mask.float()[:, None], dim=-1)
    return torch.einsum("nhl,nlr->nhr", p, lat.float()).to(q.dtype)


def mla_decode_attention(q, cache, mask, scale: float, num_kv: int, rope_dims: int,
                         use_triton: bool = True) -> torch.Tensor:
    """Dispatch: `triton_mla_attention` for CUDA tensors (splits by `mla_splits`), else the PyTorch maths."""
    fits = (use_triton and triton is not None and q.is_cuda and q.stride(-1) == 1 and cache.stride(-1) == 1
            and mask.stride(-1) == 1)
    if not fits:
        return reference_mla_attention(q, cache, mask, scale, num_kv, rope_dims)
    return triton_mla_attention(q, cache, mask, scale, num_kv, rope_dims,
                                splits=mla_splits(q.shape[0], cache.shape[1], q.device))


# launch configuration: the dense norm_qkv_rope's (grpo.engine.fused_decode.QKV_CONFIG) with wider column
# blocks for the plain part; not tuned on a GPU yet (tools/mla_decode_tune.py)
PROJ_CONFIG = dict(block_m=16, block_n=64, block_k=32, num_warps=4, num_stages=4)


def norm_mla_proj(x, norm_w, eps: float, w, b, rope_pairs, cos_table, sin_table, pos, slot, cache,
                  num_heads: int, rank: int, rope_dims: int, block_m: int | None = None,
                  block_n: int | None = None, block_k: int | None = None, num_warps: int | None = None,
                  num_stages: int | None = None) -> torch.Tensor:
    """x [N, D] (residual stream, un-normed); norm_w [D]; w [(H+1)·r + (H + n_kv)·RD, D] contiguous and b
    (that length, or None): the layer's `absorbed_weights` projection; rope_pairs [n_kv, RD/2] long; cos/sin
    tables [slots, d]; pos [N] long; slot [1] long; cache [rows ≥ N, slots, r + n_kv·RD]. Writes this
    step's c and rotated k_rope into cache slot `slot` of rows [0, N) and returns q [N, H, r + RD]."""
    cfg = dict(PROJ_CONFIG)
    cfg.update({k: v for k, v in dict(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=num_warps,
                                      num_stages=num_stages).items() if v is not None})
    n, hidden = x.shape
    n_kv = rope_pairs.shape[0]
    q = torch.empty((n, num_heads, rank + rope_dims), dtype=x.dtype, device=x.device)
    plain_blocks = triton.cdiv((num_heads + 1) * rank, cfg["block_n"])
    grid = (triton.cdiv(n, cfg["block_m"]), plain_blocks + (num_heads + n_kv if rope_dims else 0))
    _norm_mla_proj_kernel[grid](
        x, norm_w, w, w if b is None else b, rope_pairs, cos_table, sin_table, pos, slot, q, cache,
        n, eps, x.stride(0), cos_table.stride(0), q.stride(0), q.stride(1), cache.stride(0), cache.stride(1),
        HIDDEN=hidden, H=num_heads, G=num_heads // n_kv, R=rank, RD=rope_dims, HAS_BIAS=b is not None,
        BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"], M_P=_pow2(rope_dims // 2),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return q


def reference_norm_mla_proj(x, norm_w, eps: float, w, b, rope_pairs, cos_table, sin_table, pos, slot, cache,
                            num_heads: int, rank: int, rope_dims: int) -> torch.Tensor:
    """The same maths unfused in float32, rounded where the kernel rounds (tests): returns q, writes the cache."""
    n = x.shape[0]
    r, rd, n_kv = rank, rope_dims, rope_pairs.shape[0]
    xf = x.float()
    h = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * norm_w.float()
    y = h @ w.float().t() + (0 if b is None else b.float())
    y = y.to(x.dtype).float()
    plain = (num_heads + 1) * r
    q_lat = y[:, :num_heads * r].view(n, num_heads, r)
    c = y[:, num_heads * r:plain]
    rot = y[:, plain:].view(n, num_heads + n_kv, rd)
    if rd:
        m = rd // 2
        group = torch.cat((torch.arange(num_heads) // (num_heads // n_kv), torch.arange(n_kv)))
        pair = rope_pairs.cpu()[group]                                                   # [H + n_kv, m]
        cos = cos_table.float()[pos[:, None, None].cpu(), pair[None]].to(x.device)        # [N, H + n_kv, m]
        sin = sin_table.float()[pos[:, None, None].cpu(), pair[None]].to(x.device)
        a1, a2 = rot[..., :m], rot[..., m:]
        rot = torch.cat((a1 * cos - a2 * sin, a2 * cos + a1 * sin), -1).to(x.dtype).float()
    s = int(slot[0])
    cache[:n, s, :r] = c.to(cache.dtype)
    cache[:n, s, r:] = rot[:, num_heads:].reshape(n, -1).to(cache.dtype)
    return torch.cat((q_lat, rot[:, :num_heads]), -1).to(x.dtype)

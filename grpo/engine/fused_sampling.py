"""The decode step's head and sampler in two Triton launches: final RMSNorm + LM head + draw + bookkeeping.

Unfused, the end of a decode step is the final RMSNorm, the LM-head GEMM writing [N, V] logits, a
sampling kernel reading them back (log-sum-exp, exponential noise, argmax, gather), then about ten small
launches that record the token (done rows -> pad, output columns, EOS flags, the next input token,
position, slot). At N = 128 rows those launches, not the bytes, are the cost. Here:

1. `head_partials` (grid: row blocks x vocabulary blocks of BLOCK_V). Each program computes its tile of
   logits z = (RMSNorm(x) · Wᵀ) / T in fp32, never written to memory: RMSNorm is folded into the GEMM as
   in grpo.engine.fused_decode (`normed_tile`: RMSNorm(x)·W = r · ((x ⊙ g)·W), r = rsqrt(mean(x²) + eps) per
   row), and the logits are rounded to the weight dtype before the temperature, as the unfused bf16 head rounds
   them. Per (row, block) it writes four floats and an index: the block's max m_b, Σ exp(z − m_b), and
   the block's winner under the Gumbel-max trick: argmax_j (z_j + G_j) with G_j = −log(−log U_j),
   U_j ~ Uniform[0, 1) from Philox-4x32 (`tl.randint4x`: four words per call, keyed by seed + output
   column, counter (row, column / 4)) — with its score and its logit z. Temperature 0 (greedy) drops the noise. Banned tokens (EOS before
   min_new_tokens) get score −inf but stay in the normaliser, as in grpo.engine.ops.sample_tokens.
2. `commit` (grid: row blocks): per row, log-sum-exp over blocks, lse = M + log Σ_b s_b e^(m_b − M); the
   token is the winner of the block with the best score (the max of maxima is the global argmax of
   z + G, so this is an exact draw from softmax(z)); its log-prob z_tok − lse is under the full
   softmax before banning, the distribution a forward pass of the policy reproduces. Then the bookkeeping
   `EngineSampler._commit` and `_step` do unfused: finished rows get the pad token and log-prob 0, the
   token and log-prob go to this step's output column, EOS marks the row done, the token becomes the next
   input, the position advances, and the next step's cache slot is opened in the attention mask.

The output column and the slot are read by both kernels and advanced by the caller afterwards in one
launch (`counters.add_(1)`, a 2-element tensor whose views are the workspace's `out_idx` and `slot`).

Sampling is the same distribution as `sample_tokens` (Gumbel-max is exact), not the same random stream:
a seeded run reproduces itself, not the unfused path's draws. top-k / top-p are not served here (they
need the whole sorted row); the engine uses the unfused path for them.
"""
from __future__ import annotations

import torch

from grpo.engine.fused_decode import triton

if triton is not None:
    import triton.language as tl

    from grpo.engine.fused_decode import normed_tile

    @triton.jit
    def _head_partials_kernel(x_ptr, g_ptr, w_ptr, ban_ptr, seed_ptr, col_ptr, pf_ptr, pi_ptr,
                              n_rows, vocab, eps, inv_temp, min_new, sx_n,
                              HIDDEN: tl.constexpr, NOISE: tl.constexpr, BAN: tl.constexpr, ROUNDS: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_v = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_v = tl.arange(0, BLOCK_V)
        cols = pid_v * BLOCK_V + offs_v
        r_ok = rows < n_rows
        c_ok = cols < vocab
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
        ss = tl.zeros((BLOCK_M,), tl.float32)
        for k0 in range(0, HIDDEN, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < HIDDEN
            xg, sq = normed_tile(x_ptr, g_ptr, rows, ks, r_ok, k_ok, sx_n, w_ptr.dtype.element_ty)
            ss += sq
            w = tl.load(w_ptr + cols[:, None] * HIDDEN + ks[None, :], mask=c_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.dot(xg, tl.trans(w))
        r = tl.rsqrt(ss / HIDDEN + eps)
        z = (acc * r[:, None]).to(w_ptr.dtype.element_ty).to(tl.float32) * inv_temp
        z = tl.where(c_ok[None, :], z, float("-inf"))
        m = tl.max(z, axis=1)
        s = tl.sum(tl.exp(z - m[:, None]), axis=1)
        col = tl.load(col_ptr)
        score = z
        if NOISE:
            # one Philox call gives 4 words: counter (row, block, quarter column), 4 columns each
            QV: tl.constexpr = BLOCK_V // 4
            ctr = (rows[:, None] * tl.num_programs(1) + pid_v) * QV + tl.arange(0, QV)[None, :]
            r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr) + col, ctr, ROUNDS)
            bits = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), (BLOCK_M, BLOCK_V))
            u = tl.uint_to_uniform_float(bits)
            # (measured on an H100: base-2 logs here, or letting the reshape reorder, made the kernel 3x slower)
            score = z - tl.log(-tl.log(u))
        if BAN:
            banned = (tl.load(ban_ptr + cols, mask=c_ok, other=0) != 0) & (col < min_new)
            score = tl.where(banned[None, :], float("-inf"), score)
        best = tl.argmax(score, axis=1)
        best_score = tl.max(score, axis=1)
        best_z = tl.sum(tl.where(offs_v[None, :] == best[:, None], z, 0.0), axis=1)
        out = pf_ptr + (pid_v * n_rows + rows) * 4
        tl.store(out, m, mask=r_ok)
        tl.store(out + 1, s, mask=r_ok)
        tl.store(out + 2, best_score, mask=r_ok)
        tl.store(out + 3, best_z, mask=r_ok)
        tl.store(pi_ptr + pid_v * n_rows + rows, pid_v * BLOCK_V + best, mask=r_ok)

    @triton.jit
    def _commit_kernel(pf_ptr, pi_ptr, eos_ptr, done_ptr, tok_ptr, pos_ptr, mask_ptr, out_tok_ptr, out_logp_ptr,
                       slot_ptr, col_ptr, n_rows, n_blocks, slots, pad_id, sm_n, sot_n, sol_n,
                       BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        blocks = tl.arange(0, BLOCK_B)
        r_ok = rows < n_rows
        ok = r_ok[:, None] & (blocks < n_blocks)[None, :]
        base = pf_ptr + (blocks[None, :] * n_rows + rows[:, None]) * 4
        m = tl.load(base, mask=ok, other=float("-inf"))
        s = tl.load(base + 1, mask=ok, other=0.0)
        score = tl.load(base + 2, mask=ok, other=float("-inf"))
        z = tl.load(base + 3, mask=ok, other=0.0)
        idx = tl.load(pi_ptr + blocks[None, :] * n_rows + rows[:, None], mask=ok, other=0)
        big = tl.max(m, axis=1)
        lse = big + tl.log(tl.sum(s * tl.exp(m - big[:, None]), axis=1))
        win = tl.argmax(score, axis=1)
        sel = blocks[None, :] == win[:, None]
        tok = tl.sum(tl.where(sel, idx, 0), axis=1).to(tl.int64)
        logp = tl.sum(tl.where(sel, z, 0.0), axis=1) - lse
        finished = tl.load(done_ptr + rows, mask=r_ok, other=0) != 0
        tok = tl.where(finished, pad_id, tok)
        logp = tl.where(finished, 0.0, logp)
        col = tl.load(col_ptr)
        tl.store(out_tok_ptr + rows * sot_n + col, tok, mask=r_ok)
        tl.store(out_logp_ptr + rows * sol_n + col, logp, mask=r_ok)
        is_eos = tl.load(eos_ptr + tok, mask=r_ok, other=0) != 0
        tl.store(done_ptr + rows, finished | is_eos, mask=r_ok)
        tl.store(tok_ptr + rows, tok, mask=r_ok)
        tl.store(pos_ptr + rows, tl.load(pos_ptr + rows, mask=r_ok, other=0) + 1, mask=r_ok)
        nxt = rows * 0 + tl.load(slot_ptr) + 1  # [BLOCK_R], every entry the next step's slot
        tl.store(mask_ptr + rows * sm_n + nxt, tl.zeros((BLOCK_R,), tl.float32).to(mask_ptr.dtype.element_ty),
                 mask=r_ok & (nxt < slots))


# launch configuration: see tools/decode_kernels_tune.py (H100, 128 rows, SmolLM2-135M's head)
HEAD_CONFIG = dict(block_m=64, block_v=128, block_k=32, num_warps=4, num_stages=3)
PHILOX_ROUNDS = 7  # Philox-4x32-7 passes TestU01's BigCrush (Salmon et al. 2011); Triton's default is 10
COMMIT_BLOCK_R = 8


def head_partials(x, norm_w, eps: float, weight, temperature: float, seed, col, ban=None, min_new: int = 0,
                  block_m: int | None = None, block_v: int | None = None, block_k: int | None = None,
                  num_warps: int | None = None, num_stages: int | None = None, rounds: int = PHILOX_ROUNDS):
    """Kernel 1. x [N, H] (un-normed residual stream); norm_w [H]; weight [V, H] contiguous; seed, col [1]
    long tensors (the noise key is seed + col); ban [V] bool or None (banned while col < min_new).
    Returns (partials [B, N, 4] float32: max, sum-exp, best score, best logit; indices [B, N] int32)."""
    cfg = dict(HEAD_CONFIG)
    cfg.update({k: v for k, v in dict(block_m=block_m, block_v=block_v, block_k=block_k, num_warps=num_warps,
                                      num_stages=num_stages).items() if v is not None})
    n, hidden = x.shape
    vocab = weight.shape[0]
    blocks = triton.cdiv(vocab, cfg["block_v"])
    pf = torch.empty((blocks, n, 4), dtype=torch.float32, device=x.device)
    pi = torch.empty((blocks, n), dtype=torch.int32, device=x.device)
    noise = temperature > 0
    inv_temp = 1.0 / temperature if noise else 1.0
    use_ban = ban is not None and min_new > 0
    grid = (triton.cdiv(n, cfg["block_m"]), blocks)
    _head_partials_kernel[grid](
        x, norm_w, weight, ban if use_ban else seed, seed, col, pf, pi, n, vocab, eps, inv_temp, min_new,
        x.stride(0), HIDDEN=hidden, NOISE=noise, BAN=use_ban, ROUNDS=rounds, BLOCK_M=cfg["block_m"], BLOCK_V=cfg["block_v"],
        BLOCK_K=cfg["block_k"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return pf, pi


def commit(pf, pi, eos_mask, done, tok, pos, mask, out_tok, out_logp, slot, col, pad_id: int,
           block_r: int = COMMIT_BLOCK_R) -> None:
    """Kernel 2. Combines the partials into one draw per row and records it (in place): out_tok/out_logp
    [N, T] at column col; done [N] bool |= EOS; tok [N] long = the draw; pos [N] long += 1; mask [N, S]
    additive: slot + 1 opened (0) for the next step. Rows already done record pad_id and log-prob 0."""
    blocks, n = pi.shape
    grid = (triton.cdiv(n, block_r),)
    _commit_kernel[grid](
        pf, pi, eos_mask, done, tok, pos, mask, out_tok, out_logp, slot, col, n, blocks, mask.shape[1], pad_id,
        mask.stride(0), out_tok.stride(0), out_logp.stride(0), BLOCK_R=block_r,
        BLOCK_B=triton.next_power_of_2(blocks), num_warps=4)


def reference_head(x, norm_w, eps: float, weight) -> torch.Tensor:
    """The logits kernel 1 computes, unfused in float32 then rounded as it rounds them (tests)."""
    xf = x.float()
    h = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * norm_w.float()
    return (h @ weight.float().t()).to(weight.dtype).float()

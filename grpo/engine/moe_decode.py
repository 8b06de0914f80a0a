"""DeepSeekMoE MLPs (grpo.adapters.moe) in the rollout engine: routing, experts and recorded routes.

The maths is the adapter's (DeepSeek-V3, arXiv:2412.19437 §2.1.2): s = sigmoid(u·e_i) in fp32, chosen =
TopK(s + b, k) with the balancing bias b in the choice only, g_i = k·s_i / Σ_{j∈chosen} s_j, and
y = shared(u) + Σ_i g_i FFN_i(u). Experts are computed dense-masked, as the adapter does: every routed
neuron is evaluated and scaled by its expert's gate (zero when not chosen).

Why dense-masked and not grouped GEMMs at decode time. A decode step has N rows (128 at std-step) and
N·k routed (row, expert) pairs over E experts: with N·k = 256 ≫ E = 8 every expert is chosen by some row
in practice, so a step must read every expert's weights whatever the kernel. The dense-masked GEMM reads
them once, as the dense MLP does; the extra FLOPs (E/k = 4x the routed ones) are ~0.5 GFLOP per layer at
SmolLM2 shapes, well under a microsecond on an H200. A gather-bmm over the N·k chosen experts' weight
slices would read N·k/E = 32x the weights; sorting rows by expert into grouped GEMMs reads them once but
adds a sort and a scatter to every layer of a launch-bound step. Grouped GEMMs pay off when N·k < E or
when FLOPs bound (large prefills); neither is the rollout's decode.

Paths (one seam: `MoEMLP`, called by grpo.engine.sampler.Decoder):
- `__call__` (prefill, and decode off the fused path): the adapter's own `route`, `gate_weights` and
  `DeepSeekMoE.experts`, on the engine's weight mapping. The same torch.topk as the HF forward.
- `decode_fused_residual` (the fused decode step): two Triton kernels and two in-place addmm:
    1. `norm_route`: RMSNorm folded into the fp32 router GEMM (as grpo.engine.fused_decode folds it), sigmoid,
       + bias, top-k by k rounds of argmax (ties to the lowest expert index), the dense gates [N, E] and the
       chosen experts written into the route cache at this step's slot;
    2. `norm_experts`: RMSNorm + the routed and shared gate/up GEMMs + SiLU ⊙ up, the routed columns of
       expert e scaled by g_e, into one [N, E·d_e + S] activation;
    3. x += act_routed·W_downᵀ, x += act_shared·W_shared_downᵀ.
  torch.topk's order among exactly equal scores is implementation-defined (on CPU it is not the lowest
  index first); `norm_route` picks the lowest indices. Exact ties only arise with structurally equal
  scores (a zero router with top_k == E, where every expert is chosen and the order does not matter).

Routes: the engine keeps the experts chosen for every cache slot, [rows, slots, n_layers, k] int16, like
a KV cache (`Decoder.allocate_routes`): the prefill writes the prompt slots of each group's G rows, every
decode step the slot of the token it feeds. After a call, a row's routes are its real prompt slots, then
its decoded slots in order: the `RecordedRoutes` contract (grpo.adapters.moe) that the HF sampler's
recording produces for the same rows.
"""
from __future__ import annotations

import torch

from grpo.adapters.moe import gate_weights, route
from grpo.engine.attention import PrefillContext
from grpo.engine.fused_decode import triton

if triton is not None:
    import triton.language as tl

    from grpo.engine.fused_decode import normed_tile

    @triton.jit
    def _norm_route_kernel(x_ptr, g_ptr, wr_ptr, bias_ptr, gates_ptr, routes_ptr, slot_ptr, n_rows, eps, sx_n,
                           sr_n, sr_s, HIDDEN: tl.constexpr, E: tl.constexpr, K: tl.constexpr,
                           E_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        r_ok = rows < n_rows
        offs_e = tl.arange(0, E_P)
        e_ok = offs_e < E
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, E_P), tl.float32)
        ss = tl.zeros((BLOCK_M,), tl.float32)
        for k0 in range(0, HIDDEN, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < HIDDEN
            xg, sq = normed_tile(x_ptr, g_ptr, rows, ks, r_ok, k_ok, sx_n, tl.float32)
            ss += sq
            w = tl.load(wr_ptr + offs_e[:, None] * HIDDEN + ks[None, :], mask=e_ok[:, None] & k_ok[None, :],
                        other=0.0).to(tl.float32)
            acc += tl.dot(xg, tl.trans(w), input_precision="ieee")  # the router in fp32, as DeepSeek-V3
        scores = tl.sigmoid(acc * tl.rsqrt(ss / HIDDEN + eps)[:, None])                 # [BLOCK_M, E_P]
        bias = tl.load(bias_ptr + offs_e, mask=e_ok, other=0.0)
        pick = tl.where(e_ok[None, :], scores + bias[None, :], float("-inf"))
        chosen = tl.zeros((BLOCK_M, E_P), tl.int32) != 0
        total = tl.zeros((BLOCK_M,), tl.float32)
        slot = tl.load(slot_ptr)
        for j in tl.static_range(K):
            best = tl.argmax(pick, axis=1, tie_break_left=True)                           # [BLOCK_M]
            hit = offs_e[None, :] == best[:, None]
            chosen = chosen | hit
            total += tl.sum(tl.where(hit, scores, 0.0), axis=1)
            pick = tl.where(hit, float("-inf"), pick)
            tl.store(routes_ptr + rows * sr_n + slot * sr_s + j, best.to(tl.int16), mask=r_ok)
        gates = tl.where(chosen, scores / total[:, None] * K, 0.0)
        tl.store(gates_ptr + rows[:, None] * E + offs_e[None, :], gates, mask=r_ok[:, None] & e_ok[None, :])

    @triton.jit
    def _norm_experts_kernel(x_ptr, g_ptr, wg_ptr, wu_ptr, wgs_ptr, wus_ptr, gates_ptr, out_ptr, n_rows, eps,
                             sx_n, so_n, HIDDEN: tl.constexpr, E: tl.constexpr, DE: tl.constexpr,
                             SHARED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr):
        ROUTED: tl.constexpr = E * DE
        ROUTED_BLOCKS: tl.constexpr = (ROUTED + BLOCK_N - 1) // BLOCK_N
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        r_ok = rows < n_rows
        routed = pid_n < ROUTED_BLOCKS
        if routed:  # columns of the routed experts (expert e owns [e·DE, (e+1)·DE)), then the shared expert's
            wg_base = wg_ptr
            wu_base = wu_ptr
            local = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        else:
            wg_base = wgs_ptr
            wu_base = wus_ptr
            local = (pid_n - ROUTED_BLOCKS) * BLOCK_N + tl.arange(0, BLOCK_N)
        c_ok = local < tl.where(routed, ROUTED, SHARED)
        offs_k = tl.arange(0, BLOCK_K)
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        ss = tl.zeros((BLOCK_M,), tl.float32)
        for k0 in range(0, HIDDEN, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < HIDDEN
            xg, sq = normed_tile(x_ptr, g_ptr, rows, ks, r_ok, k_ok, sx_n, wg_ptr.dtype.element_ty)
            ss += sq
            w_off = local[:, None] * HIDDEN + ks[None, :]
            w_ok = c_ok[:, None] & k_ok[None, :]
            acc_g += tl.dot(xg, tl.trans(tl.load(wg_base + w_off, mask=w_ok, other=0.0)))
            acc_u += tl.dot(xg, tl.trans(tl.load(wu_base + w_off, mask=w_ok, other=0.0)))
        r = tl.rsqrt(ss / HIDDEN + eps)
        dt = out_ptr.dtype.element_ty
        gate = (acc_g * r[:, None]).to(dt).to(tl.float32)
        up = (acc_u * r[:, None]).to(dt).to(tl.float32)
        act = (gate * tl.sigmoid(gate)).to(dt).to(tl.float32) * up
        expert = tl.minimum(local // DE, E - 1)
        g_e = tl.load(gates_ptr + rows[:, None] * E + expert[None, :], mask=r_ok[:, None] & c_ok[None, :], other=1.0)
        g_e = tl.where(routed, g_e, 1.0)  # the shared expert's columns are not gated
        act = act.to(dt).to(tl.float32) * g_e.to(dt).to(tl.float32)
        col = local + tl.where(routed, 0, ROUTED)
        tl.store(out_ptr + rows[:, None] * so_n + col[None, :], act.to(dt), mask=r_ok[:, None] & c_ok[None, :])


ROUTE_CONFIG = dict(block_m=16, block_k=64, num_warps=4, num_stages=3)
# norm_experts: fused_decode.GATE_UP_CONFIG's tiles; neither is tuned on a GPU yet
EXPERTS_CONFIG = dict(block_m=64, block_n=32, block_k=32, num_warps=4, num_stages=4)


def _pow2(x: int, floor: int = 16) -> int:
    return max(floor, 1 << max(0, (x - 1).bit_length()))


def norm_route(x, norm_w, eps: float, router_w, bias, top_k: int, routes, slot, block_m: int | None = None,
               block_k: int | None = None, num_warps: int | None = None, num_stages: int | None = None):
    """x [N, D] (un-normed residual stream); norm_w [D]; router_w [E, D] (any float dtype; used in fp32); bias [E]
    fp32; routes [rows ≥ N, slots, k] int16 (a view; last stride 1), written at slot `slot` [1] long.
    Returns the gates [N, E] fp32 (k·s_i / Σ_chosen s on the chosen experts, 0 elsewhere)."""
    cfg = dict(ROUTE_CONFIG)
    cfg.update({k: v for k, v in dict(block_m=block_m, block_k=block_k, num_warps=num_warps,
                                      num_stages=num_stages).items() if v is not None})
    n, hidden = x.shape
    e = router_w.shape[0]
    gates = torch.empty((n, e), dtype=torch.float32, device=x.device)
    _norm_route_kernel[(triton.cdiv(n, cfg["block_m"]),)](
        x, norm_w, router_w, bias, gates, routes, slot, n, eps, x.stride(0), routes.stride(0), routes.stride(1),
        HIDDEN=hidden, E=e, K=top_k, E_P=_pow2(e), BLOCK_M=cfg["block_m"], BLOCK_K=cfg["block_k"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return gates


def norm_experts(x, norm_w, eps: float, wg, wu, wg_shared, wu_shared, gates, block_m: int | None = None,
                 block_n: int | None = None, block_k: int | None = None, num_warps: int | None = None,
                 num_stages: int | None = None) -> torch.Tensor:
    """x [N, D] (un-normed); wg, wu [E·d_e, D] routed (expert-major rows); wg_shared, wu_shared [S, D] or None;
    gates [N, E] -> act [N, E·d_e + S]: SiLU(h·Wgᵀ) ⊙ (h·Wuᵀ), h = RMSNorm(x), routed columns of expert e
    times gates[:, e]."""
    cfg = dict(EXPERTS_CONFIG)
    cfg.update({k: v for k, v in dict(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=num_warps,
                                      num_stages=num_stages).items() if v is not None})
    n, hidden = x.shape
    e = gates.shape[1]
    routed = wg.shape[0]
    shared = 0 if wg_shared is None else wg_shared.shape[0]
    out = torch.empty((n, routed + shared), dtype=x.dtype, device=x.device)
    blocks = triton.cdiv(routed, cfg["block_n"]) + triton.cdiv(shared, cfg["block_n"])
    _norm_experts_kernel[(triton.cdiv(n, cfg["block_m"]), blocks)](
        x, norm_w, wg, wu, wg if wg_shared is None else wg_shared, wu if wu_shared is None else wu_shared, gates,
        out, n, eps, x.stride(0), out.stride(0), HIDDEN=hidden, E=e, DE=routed // e, SHARED=shared,
        BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
    return out


def _eps(norm) -> float:
    return getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))


class MoEMLP:
    """The engine's hook for one DeepSeekMoE layer (grpo.adapters.moe), reading the module's weights only.

    routes: [rows, slots, k] int16, this layer's view of the decoder's route cache (`Decoder.allocate_routes`;
    None before it is allocated).
    """

    reads_weights_only = True

    def __init__(self, module, ops):
        self.m = module
        self.ops = ops
        self.top_k = module.cfg.top_k
        self.routes: torch.Tensor | None = None

    def __call__(self, h: torch.Tensor, ctx) -> torch.Tensor:
        """h [n, t, D] (post-attention-normed) -> [n, t, D]; records the chosen experts in `routes`: the prefill
        (PrefillContext: n prompts, t = P) for all G rows of each prompt at slots [0, P), a decode step (t = 1)
        at slot ctx.slot."""
        n, t, d = h.shape
        m, k = self.m, self.top_k
        flat = h.reshape(-1, d)
        scores, idx = route(flat, m.router.weight, m.e_score_correction_bias, k)  # the fp32 router itself
        y = m.experts(flat, gate_weights(scores, idx, k), self.ops.w)
        if self.routes is not None:
            idx = idx.view(n, t, k).to(torch.int16)
            if isinstance(ctx, PrefillContext):
                g = ctx.group_size
                self.routes[: n * g, :t].view(n, g, t, k).copy_(idx[:, None])
            else:
                self.routes[:n].index_copy_(1, ctx.slot, idx)
        return y.view(n, t, d)

    def fusable(self) -> bool:
        """Whether `decode_fused_residual` serves this layer: SiLU experts, weights contiguous."""
        m, w = self.m, self.ops.w
        lins = [m.gate_proj, m.up_proj, m.down_proj] + ([m.shared_gate_proj, m.shared_up_proj, m.shared_down_proj]
                                                        if m.shared_dim else [])
        silu = type(m.act_fn).__name__ in ("SiLU", "SiLUActivation")
        return silu and all(w(lin.weight).is_contiguous() for lin in lins) and m.router.weight.is_contiguous()

    def decode_fused_residual(self, x: torch.Tensor, norm, ctx) -> None:
        """x [N, D] the un-normed residual stream += this layer's MoE output; norm the post-attention RMSNorm.
        The chosen experts go to `routes` at ctx.slot."""
        m, w = self.m, self.ops.w
        n = x.shape[0]
        gw, eps = w(norm.weight), _eps(norm)
        gates = norm_route(x, gw, eps, m.router.weight, m.e_score_correction_bias, self.top_k, self.routes[:n],
                           ctx.slot)
        shared = m.shared_dim > 0
        act = norm_experts(x, gw, eps, w(m.gate_proj.weight), w(m.up_proj.weight),
                           w(m.shared_gate_proj.weight) if shared else None,
                           w(m.shared_up_proj.weight) if shared else None, gates)
        routed = m.gate_proj.weight.shape[0]
        x.addmm_(act[:, :routed], w(m.down_proj.weight).t())
        if shared:
            x.addmm_(act[:, routed:], w(m.shared_down_proj.weight).t())

"""Per-layer attention with its own static cache: the hook where other attention kinds plug in.

The engine calls, for each decoder layer, one object that follows `LayerAttention`:

    allocate(rows, length)      own a cache for `rows` sequences of `length` slots (called rarely)
    prefill(h, ctx) -> out      h [B, P, H] left-padded prompts, one row per prompt; must fill cache
                                slots [0, P) of all ctx.group_size rows of each prompt (row r of the
                                cache belongs to prompt r // group_size)
    decode(h, ctx) -> out       h [N, 1, H], one new token per row; write slot ctx.slot, attend to
                                cache slots [0, ctx.length) under ctx.mask
    release()                   drop the cache
    cache_tensors() -> list     the cache tensors it holds now ([] when released), each with a
                                [rows, slots, ...] layout: the engine reports KV bytes per token from them

The default, `GQAAttention`, is Llama/Qwen2/Qwen3 attention (q/k/v/o projections, optional q/k norms,
rotate-half RoPE, grouped-query heads) against a [rows, kv_heads, slots, head_dim] K/V cache. A model
whose attention module has a method `engine_attention(config, ops)` returning such an object is served
through that object instead; nothing else changes. The MLA adapter's module (grpo.adapters.mla) returns
`MLALatentAttention`: a cache of only the latent [rows, slots, rank] and the rotated decoupled keys
[rows, slots, n_kv, rope_dims] (one [rows, slots, rank + n_kv·rope_dims] tensor), with W_uk absorbed into
the query and W_uv into the output.

The engine's fused decode step (EngineSampler(fused=...)) also calls, when `fusable()` says so:

    refresh()                              once per generate call, before any step (optional: weights
                                           derived from the parameters, recomputed in place)
    decode_fused_residual(x, norm, ctx)    x [N, H] the residual stream += the layer's attention output,
                                           from the un-normed x and the layer's input RMSNorm `norm`
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from grpo.engine.fused_decode import norm_qkv_rope
from grpo.engine.mla_decode import mla_decode_attention, mla_splits, norm_mla_proj, triton_mla_attention


@dataclass
class PrefillContext:
    """positions [B, P] long (0 at each prompt's first real token), cos/sin [B, P, 1, D] of those
    positions, mask [B, 1, P, P] additive (causal, padding hidden), group_size G."""

    positions: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor
    group_size: int


@dataclass
class DecodeContext:
    """positions [N] long, cos/sin [N, 1, 1, D] (None on the fused path, whose kernel gathers from the
    tables itself), slot [1] long (cache slot written this step, the same for every row), mask
    [N, 1, 1, length] additive over cache slots, length: slots attended; cos_table/sin_table [slots, D]:
    the tables cos/sin come from."""

    positions: torch.Tensor
    cos: torch.Tensor | None
    sin: torch.Tensor | None
    slot: torch.Tensor
    mask: torch.Tensor
    length: int
    cos_table: torch.Tensor | None = None
    sin_table: torch.Tensor | None = None


class LayerAttention(Protocol):
    def allocate(self, rows: int, length: int) -> None: ...
    def prefill(self, h: torch.Tensor, ctx: PrefillContext) -> torch.Tensor: ...
    def decode(self, h: torch.Tensor, ctx: DecodeContext) -> torch.Tensor: ...
    def release(self) -> None: ...
    def cache_tensors(self) -> list[torch.Tensor]: ...


def _linear(x: torch.Tensor, lin, ops) -> torch.Tensor:
    return F.linear(x, ops.w(lin.weight), ops.w(lin.bias))


class GQAAttention:
    """Llama/Qwen-style attention reading the HF module's own weights (no copies)."""

    reads_weights_only = True  # no module forward runs (train/eval flags, hooks and dropout do not apply)

    def __init__(self, module, config, ops):
        self.m = module
        self.ops = ops
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(module, "head_dim", None) or config.hidden_size // self.n_heads
        self.rep = self.n_heads // self.n_kv
        self.scale = getattr(module, "scaling", self.head_dim ** -0.5)
        self.q_norm = getattr(module, "q_norm", None)  # Qwen3
        self.k_norm = getattr(module, "k_norm", None)
        self.k_cache = self.v_cache = None

    def kv_numel(self, rows: int, length: int) -> int:
        """Elements of this layer's K and V caches together."""
        return 2 * rows * self.n_kv * length * self.head_dim

    def allocate(self, rows: int, length: int, storage: torch.Tensor | None = None) -> None:
        """K and V caches [rows, n_kv, length, head_dim]: new zeroed tensors, or the two halves of `storage`
        (a flat buffer of `kv_numel` elements in the engine's dtype, as the workspace hands out)."""
        w = self.ops.w(self.m.q_proj.weight)
        shape = (rows, self.n_kv, length, self.head_dim)
        if storage is None:
            self.k_cache = torch.zeros(shape, dtype=w.dtype, device=w.device)
            self.v_cache = torch.zeros(shape, dtype=w.dtype, device=w.device)
        else:
            self.k_cache, self.v_cache = storage.view(2, *shape).unbind(0)

    def release(self) -> None:
        self.k_cache = self.v_cache = None

    def cache_tensors(self) -> list[torch.Tensor]:
        # [rows, kv, slots, d] -> put slots second so every cache reads as [rows, slots, ...]
        return [] if self.k_cache is None else [self.k_cache.transpose(1, 2), self.v_cache.transpose(1, 2)]

    def _qkv(self, h, cos, sin, ops):
        n, t, _ = h.shape
        q = _linear(h, self.m.q_proj, ops).view(n, t, self.n_heads, self.head_dim)
        k = _linear(h, self.m.k_proj, ops).view(n, t, self.n_kv, self.head_dim)
        v = _linear(h, self.m.v_proj, ops).view(n, t, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q = ops.rms_norm(q, ops.w(self.q_norm.weight), _eps(self.q_norm))
            k = ops.rms_norm(k, ops.w(self.k_norm.weight), _eps(self.k_norm))
        q, k = ops.rope_qk(q, k, cos, sin)
        return q, k, v  # [n, t, heads, d]

    def prefill(self, h: torch.Tensor, ctx: PrefillContext) -> torch.Tensor:
        b, p, _ = h.shape
        q, k, v = self._qkv(h, ctx.cos, ctx.sin, self.ops.plain())  # prompt shapes vary: no recompiles
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, p, d]
        g = ctx.group_size
        # one prefill per prompt, its K/V broadcast to the G rows of its group
        self.k_cache[: b * g, :, :p].view(b, g, self.n_kv, p, self.head_dim).copy_(k[:, None])
        self.v_cache[: b * g, :, :p].view(b, g, self.n_kv, p, self.head_dim).copy_(v[:, None])
        if self.rep > 1:
            k, v = k.repeat_interleave(self.rep, dim=1), v.repeat_interleave(self.rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, scale=self.scale)
        return _linear(out.transpose(1, 2).reshape(b, p, -1), self.m.o_proj, self.ops)

    def decode(self, h: torch.Tensor, ctx: DecodeContext) -> torch.Tensor:
        n = h.shape[0]
        q, k, v = self._qkv(h, ctx.cos, ctx.sin, self.ops)
        kc, vc = self.k_cache[:n], self.v_cache[:n]
        kc.index_copy_(2, ctx.slot, k.transpose(1, 2))
        vc.index_copy_(2, ctx.slot, v.transpose(1, 2))
        # a single new token: the rep query heads sharing a kv head act as rep query positions,
        # so grouped-query attention is plain attention on [N, kv, rep, D] with no K/V expansion
        q = q.view(n, self.n_kv, self.rep, self.head_dim)
        out = self.ops.decode_attention(q, kc[:, :, : ctx.length], vc[:, :, : ctx.length], ctx.mask[:, 0, 0],
                                        self.scale)
        return _linear(out.reshape(n, 1, -1), self.m.o_proj, self.ops)

    def fusable(self) -> bool:
        """Whether `decode_fused` serves this layer: no q/k norms, q/k/v weights contiguous, biases on
        all three or none, head_dim a power of two >= 32 (tensor-core tiles of D/2 columns), and o_proj
        without bias and contiguous (`decode_fused_residual` adds it as an in-place addmm)."""
        m, w = self.m, self.ops.w
        biases = [getattr(p, "bias", None) is not None for p in (m.q_proj, m.k_proj, m.v_proj)]
        d = self.head_dim
        return (self.q_norm is None and all(w(p.weight).is_contiguous() for p in (m.q_proj, m.k_proj, m.v_proj))
                and len(set(biases)) == 1 and d >= 32 and d & (d - 1) == 0
                and getattr(m.o_proj, "bias", None) is None and w(m.o_proj.weight).is_contiguous())

    def decode_fused_residual(self, x: torch.Tensor, norm, ctx: DecodeContext) -> None:
        """x [N, H] the un-normed residual stream, += this layer's attention output: `decode_fused`, then
        o_proj as an in-place addmm (the residual add is the GEMM's beta = 1)."""
        x.addmm_(self.decode_fused(x, norm, ctx), self.ops.w(self.m.o_proj.weight).t())

    def decode_fused(self, x: torch.Tensor, norm, ctx: DecodeContext) -> torch.Tensor:
        """x [N, H] the un-normed residual stream; norm the layer's input RMSNorm. One Triton kernel
        (grpo.engine.fused_decode.norm_qkv_rope) normalises, projects, rotates and writes this step's
        K/V into the cache; then decode attention. Returns the attention output [N, Hq·D] before o_proj."""
        n = x.shape[0]
        w, m = self.ops.w, self.m
        q = norm_qkv_rope(x, w(norm.weight), _eps(norm), w(m.q_proj.weight), w(m.k_proj.weight),
                          w(m.v_proj.weight), w(m.q_proj.bias), w(m.k_proj.bias), w(m.v_proj.bias),
                          ctx.cos_table, ctx.sin_table, ctx.positions, ctx.slot, self.k_cache, self.v_cache)
        kc, vc = self.k_cache[:n, :, : ctx.length], self.v_cache[:n, :, : ctx.length]
        out = self.ops.decode_attention(q.view(n, self.n_kv, self.rep, self.head_dim), kc, vc,
                                        ctx.mask[:, 0, 0], self.scale)
        return out.reshape(n, -1)


class MLALatentAttention:
    """Multi-head latent attention (grpo.adapters.mla.MLAAttention) on an absorbed latent cache.

    Per layer the cache is one tensor [rows, slots, r + n_kv·2m]: the latent c = W_dkv x, then the rotated
    decoupled keys of each KV head (`latent` and `k_rope` are views of its two parts); the per-head keys
    and values are never materialised. Scores are (W_uk^T q_nope)·c + q_rope·k_rope and the output is
    W_o W_uv (Σ_j p_j c_j), as in DeepSeek-V2's inference.

    Three paths, one maths: the prefill and the CPU decode call the module's own `_project`,
    `latent_attention` and `latent_output` with the engine's weight mapping (low-precision shadows); the
    decode on CUDA runs the attention core as grpo.engine.mla_decode's Triton kernel (all heads of a row
    read its cache once); the fused decode step (`decode_fused_residual`) runs RMSNorm + every projection +
    RoPE + the cache write as one kernel on the module's `absorbed_weights` (W_uk folded into the query
    projection, W_uv into o_proj), which `refresh` recasts into static buffers at each `generate` call.
    """

    reads_weights_only = True  # no module forward runs (train/eval flags, hooks and dropout do not apply)

    def __init__(self, module, config, ops):
        self.m = module
        self.ops = ops
        self.rank, self.rope_dims, self.n_kv = module.rank, module.rope_dims, module.num_kv
        self.n_heads, self.group = module.num_heads, module.num_key_value_groups
        self.width = self.rank + self.n_kv * self.rope_dims
        self.cache = self.latent = self.k_rope = None
        self.absorbed: dict | None = None  # `absorbed_weights` in the engine's dtype (static addresses)

    def kv_numel(self, rows: int, length: int) -> int:
        """Elements of this layer's cache."""
        return rows * length * self.width

    def allocate(self, rows: int, length: int, storage: torch.Tensor | None = None) -> None:
        """The cache [rows, length, r + n_kv·2m]: a new zeroed tensor, or a view of `storage` (a flat buffer
        of `kv_numel` elements in the engine's dtype)."""
        w = self.ops.w(self.m.q_proj.weight)
        shape = (rows, length, self.width)
        self.cache = torch.zeros(shape, dtype=w.dtype, device=w.device) if storage is None else storage.view(shape)
        self.latent = self.cache[..., :self.rank]
        self.k_rope = self.cache[..., self.rank:].unflatten(-1, (self.n_kv, self.rope_dims))

    def release(self) -> None:
        self.cache = self.latent = self.k_rope = None

    def cache_tensors(self) -> list[torch.Tensor]:
        return [] if self.cache is None else [self.latent, self.k_rope]

    def prefill(self, h: torch.Tensor, ctx: PrefillContext) -> torch.Tensor:
        b, p, _ = h.shape
        g = ctx.group_size
        w = self.ops.w
        q, c, kr = self.m._project(h, (ctx.cos[:, :, 0], ctx.sin[:, :, 0]), w)
        # one prefill per prompt, its latent / rotary keys broadcast to the G rows of its group
        self.latent[: b * g, :p].view(b, g, p, self.rank).copy_(c[:, None])
        self.k_rope[: b * g, :p].view(b, g, p, self.n_kv, self.rope_dims).copy_(kr[:, None])
        out = self.m.latent_attention(q, c, kr, bias=ctx.mask[:, :, None], w=w)  # mask [B,1,1,P,P]
        return self.m.latent_output(out, w)

    def decode(self, h: torch.Tensor, ctx: DecodeContext) -> torch.Tensor:
        n = h.shape[0]
        w = self.ops.w
        q, c, kr = self.m._project(h, (ctx.cos[:, :, 0], ctx.sin[:, :, 0]), w)
        lat, krc = self.latent[:n], self.k_rope[:n]
        lat.index_copy_(1, ctx.slot, c)
        krc.index_copy_(1, ctx.slot, kr)
        if self.ops.triton_attention and h.is_cuda:
            r, rd = self.rank, self.rope_dims
            q_nope = q[:, 0, :, rd:].unflatten(1, (self.n_kv, self.group))              # [N, n_kv, G, d-2m]
            w_uk = w(self.m.k_up.weight).view(self.n_kv, -1, r)
            q_lat = torch.einsum("nkge,ker->nkgr", q_nope, w_uk).flatten(1, 2)           # [N, H, r]
            out = mla_decode_attention(torch.cat((q_lat, q[:, 0, :, :rd]), -1), self.cache[:n, : ctx.length],
                                       ctx.mask[:, 0, 0], self.m.scaling, self.n_kv, rd)
            out = out.view(n, 1, self.n_kv, self.group, r)
        else:
            out = self.m.latent_attention(q, lat[:, : ctx.length], krc[:, : ctx.length],
                                          bias=ctx.mask[:, :, None], w=w)  # mask [N,1,1,1,length]
        return self.m.latent_output(out, w)

    def fusable(self) -> bool:
        """Whether `decode_fused_residual` serves this layer: rotary dims kept (> 0) and no sliding window."""
        return self.rope_dims > 0 and self.m.sliding_window is None

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the absorbed weights from the current parameters into the same buffers (the engine's
        CUDA graphs hold their addresses): once per `generate` call, as the engine refreshes its shadows."""
        dtype = self.ops.w(self.m.q_proj.weight).dtype
        fresh = self.m.absorbed_weights()
        if self.absorbed is None:
            self.absorbed = {k: None if v is None else v.to(dtype).contiguous() for k, v in fresh.items()}
            return
        for k, v in fresh.items():
            if v is not None:
                self.absorbed[k].copy_(v)

    def decode_fused_residual(self, x: torch.Tensor, norm, ctx: DecodeContext) -> None:
        """x [N, D] the un-normed residual stream, += this layer's attention output; norm its input RMSNorm.
        Two Triton kernels (grpo.engine.mla_decode: `norm_mla_proj`, then `triton_mla_attention`) and the
        absorbed output projection as an in-place addmm. Needs `refresh` first."""
        n = x.shape[0]
        a, w = self.absorbed, self.ops.w
        q = norm_mla_proj(x, w(norm.weight), _eps(norm), a["proj"], a["proj_bias"], self.m.rope_pairs,
                          ctx.cos_table, ctx.sin_table, ctx.positions, ctx.slot, self.cache, self.n_heads,
                          self.rank, self.rope_dims)
        cache = self.cache[:n, : ctx.length]
        out = triton_mla_attention(q, cache, ctx.mask[:, 0, 0], self.m.scaling, self.n_kv, self.rope_dims,
                                   splits=mla_splits(n, ctx.length, x.device))
        x.addmm_(out.view(n, -1), a["out"].t())
        if a["out_bias"] is not None:
            x.add_(a["out_bias"])


def _eps(norm) -> float:
    return getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))


def attention_for(module, config, ops) -> LayerAttention:
    """The layer's engine attention: its own `engine_attention` if it has one, else GQA."""
    hook = getattr(module, "engine_attention", None)
    if callable(hook):
        return hook(config, ops)
    return GQAAttention(module, config, ops)

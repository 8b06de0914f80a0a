"""Multi-head Latent Attention (MLA) conversion of a Llama/Qwen2 GQA attention layer.

Follows MHA2MLA (Ji et al. 2025, arXiv:2502.14837): partial RoPE chosen per KV head, then a joint
low-rank factorisation of the position-free keys and the values; decoding uses DeepSeek-V2's
absorption (arXiv:2405.04434 §2.1.2-2.1.3) so that only the latent and the rotary key are cached.

Notation per layer: D hidden, H query heads, G = H / n_kv heads per KV group, d = head_dim,
m = rope_dims / 2 rotary frequency pairs kept per KV head, r = rank. HF RoPE pairs dim i with
dim i + d/2 at frequency θ_i (i < d/2).

1. Partial RoPE. For KV head g and pair i the score contribution is
   Σ_{h∈g} q_{h,i}·k_{g,i} ≤ Σ_{h∈g} ‖q_{h,i}‖‖k_{g,i}‖ (a 2-d rotation keeps pair norms). "norm"
   keeps the m pairs with the largest Σ_h E‖q_{h,i}‖ · E‖k_{g,i}‖ (MHA2MLA's 2-norm criterion),
   measured on calibration tokens when given, else on the weights (‖diag(γ) W‖ of the pair's rows,
   the activation norm under whitened inputs). "fixed" keeps pairs 0..m-1 (highest frequencies).
   "rotation" (ours) scores the error of dropping the rotation instead of the pair's size: at
   relative distance Δ, |q_i·R(θ_iΔ)k_i − q_i·k_i| ≤ ‖q_i‖‖k_i‖·2|sin(θ_iΔ/2)|, so it multiplies the
   2-norm score by the mean of 2|sin(θ_iΔ/2)| over Δ = 1..rope_context. Low-frequency pairs barely
   rotate over a short context; they are safe to make position-free however large their norm.
   Measured on SmolLM2-135M (rank 64, 4 pairs per KV head, unhealed GSM8K-test perplexity, dense
   6.53): norm 118.3, rotation 63.2, fixed 60.0; "rotation" is the default (it keeps the 2-norm
   criterion's per-head, data-driven choice and adapts to the RoPE base).
   The rows of W_q (per head) and W_k (per KV head) are permuted so that the kept dims come first,
   laid out [i_1..i_m, i_1+d/2..i_m+d/2] (rotate_half works within them); q·k is unchanged by a
   common permutation. The other d - 2m dims lose RoPE: this is the (only) approximation of step 1.

2. Joint low-rank KV. Stack the position-free key rows and the value rows,
   W_kv = [W_k,nope; W_v] of shape [n_kv(d-2m) + n_kv d, D], take U_r, the top-r left singular
   vectors of W_kv S (S = chol(E[x xᵀ]) from calibration inputs x, else S = I), and set
       c = W_dkv x,  W_dkv = U_rᵀ W_kv  [r, D];     [k_nope; v] = U_r c,  U_r = [W_uk; W_uv].
   This is the best rank-r approximation of W_kv x in the calibration norm. The key bias of the
   position-free dims adds q·b, the same for every key of a query, so softmax drops it exactly;
   the value bias stays on W_uv; the rotary key keeps its bias.

3. Absorbed decoding (cache = [c | rotated k_rope] per token, width r + n_kv·2m):
       q_nope·k_nope,j = q_nope·(W_uk^g c_j) = (W_uk^gᵀ q_nope)·c_j        (q̃ = W_uk^gᵀ q_nope ∈ R^r)
       o_h = Σ_j p_hj W_uv^g c_j = W_uv^g (Σ_j p_hj c_j)
   so each head attends MQA-style over the shared latents; nothing per head is cached.
   `MLAAttention.absorbed_step` implements it (`latent_attention` + `latent_output`); `mla_generate`
   is a greedy loop on it, and `cache_bytes_per_token` measures the tensors that loop allocates. The
   rollout engine serves MLA layers through `engine_attention` (grpo.engine.attention.
   MLALatentAttention): the same maths on a static cache of latents [rows, slots, r] and rotary keys
   [rows, slots, n_kv, 2m]; `EngineSampler.kv_bytes_per_token` reports its bytes per token.

The HF `forward` (training, logprobs, `generate`) rebuilds per-head K and V from the latent and
uses the ordinary attention kernels and DynamicCache: exact and fast to train, but it caches full
K/V, exactly like transformers' DeepseekV3 classes. The memory saving lives in the absorbed path
(`absorbed_step`, `mla_generate`, and the rollout engine).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

try:
    from transformers.models.llama.modeling_llama import eager_attention_forward
except ImportError:  # pragma: no cover
    eager_attention_forward = None


@dataclass
class MLAConfig:
    rank: int = 64
    rope_dims: int = 8            # rotary dims kept per KV head (2 per frequency pair)
    rope_selection: str = "rotation"  # "rotation" (2-norm × rotation) | "norm" (MHA2MLA 2-norm) | "fixed"
    rope_context: int = 1024      # "rotation": relative distances 1..rope_context the error averages over

    @classmethod
    def from_dict(cls, d: dict) -> "MLAConfig":
        names = {f.name for f in fields(cls)}
        for k in d:
            if k not in names:
                raise ValueError(f"unknown model.adapter.mla key {k!r}; valid keys: {sorted(names)}")
        cfg = cls(**d)
        if cfg.rope_dims % 2 or cfg.rope_dims < 0:
            raise ValueError(f"mla.rope_dims must be even and >= 0, got {cfg.rope_dims}")
        if cfg.rope_selection not in ("norm", "rotation", "fixed"):
            raise ValueError(f"mla.rope_selection must be 'norm', 'rotation' or 'fixed', got {cfg.rope_selection!r}")
        if cfg.rank < 1:
            raise ValueError("mla.rank must be >= 1")
        return cfg


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _same(p):
    return p


def _lin(x, lin, w):
    return F.linear(x, w(lin.weight), None if lin.bias is None else w(lin.bias))


class MLAAttention(nn.Module):
    """Drop-in for LlamaAttention / Qwen2Attention (same forward signature and return)."""

    compilable = True  # grpo.models.compile_blocks may compile it (and its layer) whole: tensor maths only

    def __init__(self, config, layer_idx: int, cfg: MLAConfig, qkv_bias: bool = False, o_bias: bool = False,
                 sliding_window=None, dtype=None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.num_key_value_groups = self.num_heads // self.num_kv
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = getattr(config, "attention_dropout", 0.0)
        self.is_causal = True
        self.sliding_window = sliding_window
        self.rank = cfg.rank
        self.rope_dims = cfg.rope_dims
        if cfg.rope_dims > self.head_dim:
            raise ValueError(f"mla.rope_dims {cfg.rope_dims} > head_dim {self.head_dim}")
        d, n_kv, h, hid = self.head_dim, self.num_kv, self.num_heads, config.hidden_size
        q_bias = qkv_bias
        self.q_proj = nn.Linear(hid, h * d, bias=q_bias, dtype=dtype)
        self.kv_down = nn.Linear(hid, cfg.rank, bias=False, dtype=dtype)
        self.k_rope_proj = nn.Linear(hid, n_kv * cfg.rope_dims, bias=q_bias, dtype=dtype)
        self.k_up = nn.Linear(cfg.rank, n_kv * (d - cfg.rope_dims), bias=False, dtype=dtype)
        self.v_up = nn.Linear(cfg.rank, n_kv * d, bias=q_bias, dtype=dtype)
        self.o_proj = nn.Linear(h * d, hid, bias=o_bias, dtype=dtype)
        # kept frequency pairs per KV head, in the order of the permuted rotary dims
        self.register_buffer("rope_pairs", torch.zeros(n_kv, cfg.rope_dims // 2, dtype=torch.long))

    # ---- RoPE on the kept pairs -------------------------------------------------------------
    def _rope(self, position_embeddings):
        """cos/sin [B, L, d] (HF layout) -> [B, L, n_kv, 2m] for the kept pairs of each KV head."""
        cos, sin = position_embeddings
        cos = cos[..., self.rope_pairs]                                  # [B, L, n_kv, m]
        sin = sin[..., self.rope_pairs]
        return torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)

    def _project(self, x, position_embeddings, w=None):
        """x [B, L, D] -> rotated q [B, L, H, d], latent c [B, L, r], rotated k_rope [B, L, n_kv, 2m].
        w maps a parameter to the tensor to compute with (the rollout engine's low-precision shadows)."""
        w = w or _same
        b, l, _ = x.shape
        rd, g = self.rope_dims, self.num_key_value_groups
        q = _lin(x, self.q_proj, w).view(b, l, self.num_heads, self.head_dim)
        c = _lin(x, self.kv_down, w)
        kr = _lin(x, self.k_rope_proj, w).view(b, l, self.num_kv, rd)
        if rd:
            cos, sin = self._rope(position_embeddings)
            kr = kr * cos + _rotate_half(kr) * sin
            qr = q[..., :rd]
            cq, sq = cos.repeat_interleave(g, dim=2), sin.repeat_interleave(g, dim=2)
            q = torch.cat((qr * cq + _rotate_half(qr) * sq, q[..., rd:]), dim=-1)
        return q, c, kr

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                cache=None, **kwargs):
        cache = past_key_values if past_key_values is not None else cache  # transformers >= 5.24 says `cache`
        b, l, _ = hidden_states.shape
        q, c, kr = self._project(hidden_states, position_embeddings)
        kn = self.k_up(c).view(b, l, self.num_kv, self.head_dim - self.rope_dims)
        k = torch.cat((kr, kn), dim=-1).transpose(1, 2)                 # [B, n_kv, L, d]
        v = self.v_up(c).view(b, l, self.num_kv, self.head_dim).transpose(1, 2)
        q = q.transpose(1, 2)                                            # [B, H, L, d]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        if self.sliding_window is not None:
            kwargs["sliding_window"] = self.sliding_window
        out, weights = attn(self, q, k, v, attention_mask, dropout=0.0 if not self.training else
                            self.attention_dropout, scaling=self.scaling, **kwargs)
        return self.o_proj(out.reshape(b, l, -1).contiguous()), weights

    # ---- absorbed latent-cache decoding -----------------------------------------------------
    @property
    def cache_width(self) -> int:
        return self.rank + self.num_kv * self.rope_dims

    def absorbed_step(self, hidden_states, position_embeddings, cache: torch.Tensor, start: int,
                      key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention for L new tokens using only the latent cache.

        hidden_states: [B, L, D] (after input_layernorm); position_embeddings: HF (cos, sin) [B, L, d]
        for the new tokens; cache: [B, S_max, r + n_kv·2m], rows [0, start) already filled, rows
        [start, start+L) are written here; key_mask: [B, start+L] bool, False for padding keys.
        Token i of the step attends to cache rows <= start + i. Returns [B, L, D].
        """
        b, l, _ = hidden_states.shape
        r, rd, n_kv = self.rank, self.rope_dims, self.num_kv
        q, c, kr = self._project(hidden_states, position_embeddings)
        cache[:, start:start + l, :r] = c.to(cache.dtype)
        cache[:, start:start + l, r:] = kr.reshape(b, l, -1).to(cache.dtype)
        s = start + l
        lat = cache[:, :s, :r]                                           # [B, S, r]
        krope = cache[:, :s, r:].view(b, s, n_kv, rd)                    # [B, S, n_kv, 2m]
        pos = torch.arange(s, device=cache.device)
        allowed = pos[None, :] <= (start + torch.arange(l, device=cache.device))[:, None]  # [L, S]
        if self.sliding_window is not None:
            allowed &= pos[None, :] > (start + torch.arange(l, device=cache.device))[:, None] - self.sliding_window
        allowed = allowed[None, None, None]
        if key_mask is not None:  # a padding query keeps its own key so its softmax row is not all -inf
            own = pos[None, :] == (start + torch.arange(l, device=cache.device))[:, None]
            allowed = (allowed & key_mask[:, None, None, None, :s]) | own
        ctx = self.latent_attention(q, lat, krope, allowed=allowed)
        return self.latent_output(ctx)

    def latent_attention(self, q, lat, krope, allowed=None, bias=None, w=None):
        """The absorbed attention core. q [B, L, H, d] rotated queries (from `_project`), lat [B, S, r],
        krope [B, S, n_kv, 2m] rotated keys; allowed: bool broadcastable to [B, n_kv, G, L, S], and/or
        bias: additive float mask of that shape. Returns the attended latents [B, L, n_kv, G, r]."""
        w = w or _same
        b, l = q.shape[:2]
        r, rd, n_kv, g, d = self.rank, self.rope_dims, self.num_kv, self.num_key_value_groups, self.head_dim
        q = q.view(b, l, n_kv, g, d)
        w_uk = w(self.k_up.weight).view(n_kv, d - rd, r)
        q_lat = torch.einsum("blkgd,kdr->blkgr", q[..., rd:], w_uk)     # absorbed queries
        scores = torch.einsum("blkgr,bsr->bkgls", q_lat, lat)
        if rd:
            scores = scores + torch.einsum("blkgd,bskd->bkgls", q[..., :rd], krope)
        scores = scores.float() * self.scaling                          # [B, n_kv, G, L, S]
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        if bias is not None:
            scores = scores + bias
        p = torch.softmax(scores, dim=-1).to(lat.dtype)
        return torch.einsum("bkgls,bsr->blkgr", p, lat)                 # [B, L, n_kv, G, r]

    def latent_output(self, ctx, w=None):
        """Attended latents [B, L, n_kv, G, r] -> attention output [B, L, D] (W_uv absorbed per head)."""
        w = w or _same
        b, l = ctx.shape[:2]
        n_kv, d, r = self.num_kv, self.head_dim, self.rank
        o = torch.einsum("blkgr,kdr->blkgd", ctx, w(self.v_up.weight).view(n_kv, d, r))
        if self.v_up.bias is not None:
            o = o + w(self.v_up.bias).view(n_kv, 1, d)
        return _lin(o.reshape(b, l, -1), self.o_proj, w)

    @torch.no_grad()
    def absorbed_weights(self) -> dict[str, torch.Tensor | None]:
        """The decode step's projections with W_uk and W_uv absorbed (step 3 above), in float32 from this
        module's parameters, for grpo.engine.mla_decode:

            proj [(H+1)·r + (H + n_kv)·2m, D], rows in this order:
                W_qa (H·r)      head h: W_uk^gᵀ W_q,nope[h]         (so h·W_qaᵀ = q̃, the absorbed query)
                W_dkv (r)       the latent c
                W_q,rope (H·2m) each head's rotary query rows
                W_k,rope (n_kv·2m)
            proj_bias: that length (q bias absorbed the same way; c has none) or None without q/k biases
            out [D, H·r] = W_o[:, head h] · W_uv^g per head       (attended latents -> attention output)
            out_bias [D] = W_o · b_v (per head) + b_o, or None when neither exists

        g = h // G is head h's KV group. The engine casts them to its dtype once per `generate` call."""
        h, g, n_kv, d, r, rd = (self.num_heads, self.num_key_value_groups, self.num_kv, self.head_dim,
                                self.rank, self.rope_dims)
        group = torch.arange(h, device=self.q_proj.weight.device) // g
        wq = self.q_proj.weight.float().view(h, d, -1)                                   # [H, d, D]
        w_uk = self.k_up.weight.float().view(n_kv, d - rd, r)[group]                     # [H, d-2m, r]
        parts = [torch.einsum("her,heD->hrD", w_uk, wq[:, rd:]).flatten(0, 1), self.kv_down.weight.float(),
                 wq[:, :rd].flatten(0, 1), self.k_rope_proj.weight.float()]
        bq, bk = self.q_proj.bias, self.k_rope_proj.bias
        proj_bias = None
        if bq is not None or bk is not None:
            bq = bq.float().view(h, d) if bq is not None else wq.new_zeros(h, d)
            bk = bk.float() if bk is not None else wq.new_zeros(n_kv * rd)
            proj_bias = torch.cat((torch.einsum("her,he->hr", w_uk, bq[:, rd:]).flatten(), wq.new_zeros(r),
                                   bq[:, :rd].flatten(), bk))
        wo = self.o_proj.weight.float().view(-1, h, d)                                    # [D, H, d]
        w_uv = self.v_up.weight.float().view(n_kv, d, r)[group]                          # [H, d, r]
        out = torch.einsum("Dhd,hdr->Dhr", wo, w_uv).flatten(1)
        out_bias = None
        if self.v_up.bias is not None or self.o_proj.bias is not None:
            out_bias = wo.new_zeros(wo.shape[0])
            if self.v_up.bias is not None:
                out_bias = out_bias + wo.flatten(1) @ self.v_up.bias.float().view(n_kv, d)[group].flatten()
            if self.o_proj.bias is not None:
                out_bias = out_bias + self.o_proj.bias.float()
        return {"proj": torch.cat(parts), "proj_bias": proj_bias, "out": out, "out_bias": out_bias}

    def engine_attention(self, config, ops):
        """The rollout engine's per-layer attention for this module: a static latent + rotary-key cache."""
        from grpo.engine.attention import MLALatentAttention
        return MLALatentAttention(self, config, ops)

    # ---- conversion -------------------------------------------------------------------------
    @torch.no_grad()
    def init_from(self, attn: nn.Module, pair_score: torch.Tensor, input_cov: torch.Tensor | None):
        """Copy/factor the weights of a dense attention `attn`. pair_score: [n_kv, d/2] (higher = keep)."""
        d, n_kv, h, m, half = self.head_dim, self.num_kv, self.num_heads, self.rope_dims // 2, self.head_dim // 2
        g = self.num_key_value_groups
        keep = torch.sort(torch.topk(pair_score, m, dim=-1).indices, dim=-1).values if m else \
            torch.zeros(n_kv, 0, dtype=torch.long)
        self.rope_pairs.copy_(keep)
        perms = []
        for kv in range(n_kv):
            kept = keep[kv].tolist()
            rest = [i for i in range(half) if i not in set(kept)]
            perms.append(torch.tensor(kept + [i + half for i in kept] + rest + [i + half for i in rest]))
        perm = torch.stack(perms).to(attn.q_proj.weight.device)          # [n_kv, d]
        q_rows = (torch.arange(h, device=perm.device)[:, None] * d + perm.repeat_interleave(g, 0)).reshape(-1)
        k_rows = (torch.arange(n_kv, device=perm.device)[:, None] * d + perm)  # [n_kv, d]
        self.q_proj.weight.copy_(attn.q_proj.weight[q_rows])
        if attn.q_proj.bias is not None:
            self.q_proj.bias.copy_(attn.q_proj.bias[q_rows])
        rd = self.rope_dims
        wk, wv = attn.k_proj.weight.float(), attn.v_proj.weight.float()
        self.k_rope_proj.weight.copy_(wk[k_rows[:, :rd].reshape(-1)])
        if attn.k_proj.bias is not None:
            self.k_rope_proj.bias.copy_(attn.k_proj.bias[k_rows[:, :rd].reshape(-1)])
        w_kv = torch.cat((wk[k_rows[:, rd:].reshape(-1)], wv), dim=0)    # [n_kv(d-2m) + n_kv d, D]
        if input_cov is not None:
            cov = input_cov.double()
            cov = cov + 1e-6 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
            basis = w_kv.double() @ torch.linalg.cholesky(cov)
        else:
            basis = w_kv.double()
        u = torch.linalg.svd(basis, full_matrices=False).U[:, :self.rank]  # [out, r]
        if u.shape[1] < self.rank:
            raise ValueError(f"mla.rank {self.rank} > stacked KV rows {u.shape[0]}")
        self.kv_down.weight.copy_((u.t() @ w_kv.double()).to(self.kv_down.weight.dtype))
        nk = n_kv * (d - rd)
        self.k_up.weight.copy_(u[:nk].to(self.k_up.weight.dtype))
        self.v_up.weight.copy_(u[nk:].to(self.v_up.weight.dtype))
        if self.v_up.bias is not None:
            self.v_up.bias.copy_(attn.v_proj.bias)
        self.o_proj.weight.copy_(attn.o_proj.weight)
        if attn.o_proj.bias is not None:
            self.o_proj.bias.copy_(attn.o_proj.bias)


# ---- whole-model helpers ------------------------------------------------------------------------

def _pair_norms(w: torch.Tensor, heads: int, d: int) -> torch.Tensor:
    """Frobenius norm of each pair's rows: w [heads*d, D] -> [heads, d/2]."""
    w = w.float().view(heads, 2, d // 2, -1)                             # dims i and i + d/2
    return w.pow(2).sum(dim=(1, 3)).sqrt()


@torch.no_grad()
def _calibrate(model, calibration_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """Per layer: input covariance [D, D] and mean pair norms of q [H, d/2] and k [n_kv, d/2]."""
    stats, hooks = {}, []
    for i, layer in enumerate(model.model.layers):
        def hook(module, args, kwargs, i=i):
            x = kwargs.get("hidden_states", args[0] if args else None).float()
            x = x.reshape(-1, x.shape[-1])
            if attention_mask is not None:
                x = x[attention_mask.reshape(-1).bool().to(x.device)]
            d = module.head_dim
            q = F.linear(x, module.q_proj.weight.float(), None if module.q_proj.bias is None else
                         module.q_proj.bias.float()).view(x.shape[0], -1, 2, d // 2)
            k = F.linear(x, module.k_proj.weight.float(), None if module.k_proj.bias is None else
                         module.k_proj.bias.float()).view(x.shape[0], -1, 2, d // 2)
            st = stats.setdefault(i, {"cov": 0.0, "q": 0.0, "k": 0.0, "n": 0})
            st["cov"] = st["cov"] + x.double().t() @ x.double()
            st["q"] = st["q"] + q.norm(dim=2).sum(0)
            st["k"] = st["k"] + k.norm(dim=2).sum(0)
            st["n"] += x.shape[0]
        hooks.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model(input_ids=calibration_ids, attention_mask=attention_mask)
    finally:
        for h in hooks:
            h.remove()
    return {i: {"cov": s["cov"] / s["n"], "q": s["q"] / s["n"], "k": s["k"] / s["n"]} for i, s in stats.items()}


def convert_mla(model, cfg: MLAConfig, init: bool = True, calibration_ids: torch.Tensor | None = None,
                calibration_mask: torch.Tensor | None = None) -> None:
    """Replace every layer's self_attn with MLAAttention (weights derived from it when init)."""
    c = model.config
    calib = _calibrate(model, calibration_ids, calibration_mask) if (init and calibration_ids is not None) else {}
    for i, layer in enumerate(model.model.layers):
        old = layer.self_attn
        w = old.q_proj.weight
        new = MLAAttention(c, i, cfg, qkv_bias=old.q_proj.bias is not None, o_bias=old.o_proj.bias is not None,
                           sliding_window=getattr(old, "sliding_window", None), dtype=w.dtype)
        new.to(w.device)
        if init:
            d, n_kv, g = new.head_dim, new.num_kv, new.num_key_value_groups
            if cfg.rope_selection == "fixed":
                score = torch.arange(d // 2, 0, -1, dtype=torch.float32).expand(n_kv, -1)
            elif i in calib:
                qn, kn = calib[i]["q"], calib[i]["k"]                   # [H, d/2], [n_kv, d/2]
                score = qn.view(n_kv, g, -1).sum(1) * kn
            else:
                gamma = layer.input_layernorm.weight.float()
                qn = _pair_norms(old.q_proj.weight * gamma, new.num_heads, d)
                kn = _pair_norms(old.k_proj.weight * gamma, n_kv, d)
                score = qn.view(n_kv, g, -1).sum(1) * kn
            if cfg.rope_selection == "rotation":
                score = score.cpu() * _rotation_error(model, cfg.rope_context)
            new.init_from(old, score.cpu(), calib[i]["cov"] if i in calib else None)
        layer.self_attn = new


def _rotation_error(model, context: int) -> torch.Tensor:
    """mean_{Δ=1..context} 2|sin(θ_i Δ / 2)| per frequency pair i: [d/2], from the model's inv_freq."""
    inv_freq = model.model.rotary_emb.inv_freq.detach().float().cpu()              # [d/2]
    delta = torch.arange(1, context + 1, dtype=torch.float32)
    return (2 * torch.sin(inv_freq[:, None] * delta[None, :] / 2).abs()).mean(1)


def mla_layers(model) -> list[MLAAttention]:
    return [m for m in model.modules() if isinstance(m, MLAAttention)]


def allocate_latent_cache(model, batch: int, max_len: int, dtype=None, device=None) -> list[torch.Tensor]:
    """One [B, S, r + n_kv·2m] tensor per layer: everything the absorbed decode path keeps."""
    p = next(model.parameters())
    return [torch.zeros(batch, max_len, a.cache_width, dtype=dtype or p.dtype, device=device or p.device)
            for a in mla_layers(model)]


def cache_bytes_per_token(model, dtype=torch.bfloat16) -> int:
    """KV-cache bytes per token. MLA models: measured on the tensors `allocate_latent_cache` creates
    for one token; dense models: the K and V a standard cache holds (2 · n_kv · d per layer)."""
    if mla_layers(model):
        return sum(t.numel() * t.element_size() for t in allocate_latent_cache(model, 1, 1, dtype, "cpu"))
    c = model.config
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c.num_hidden_layers * 2 * c.num_key_value_heads * d * torch.empty((), dtype=dtype).element_size()


def absorbed_forward(model, input_ids: torch.Tensor, position_ids: torch.Tensor, caches: list[torch.Tensor],
                     start: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Whole-model forward of L new tokens on the latent caches. input_ids/position_ids [B, L],
    key_mask [B, >= start+L] bool (False = padding key). Returns logits [B, L, V]."""
    inner = model.model
    h = inner.embed_tokens(input_ids)
    pe = inner.rotary_emb(h, position_ids)
    l = input_ids.shape[1]
    km = key_mask[:, :start + l] if key_mask is not None else None
    for layer, cache in zip(inner.layers, caches):
        h = h + layer.self_attn.absorbed_step(layer.input_layernorm(h), pe, cache, start, km)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(inner.norm(h))


@torch.no_grad()
def mla_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 32, eos_token_id: int | None = None) -> torch.Tensor:
    """Greedy decoding on the absorbed latent cache. input_ids [B, P] left-padded -> [B, P + T]
    (rows that finished repeat eos_token_id)."""
    b, p = input_ids.shape
    dev = input_ids.device
    mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    total = p + max_new_tokens
    caches = allocate_latent_cache(model, b, total)
    key_mask = torch.ones(b, total, dtype=torch.bool, device=dev)
    key_mask[:, :p] = mask
    pos = (mask.long().cumsum(1) - 1).clamp_min(0)
    out, done, start, ids = [input_ids], torch.zeros(b, dtype=torch.bool, device=dev), 0, input_ids
    for _ in range(max_new_tokens):
        nxt = absorbed_forward(model, ids, pos, caches, start, key_mask)[:, -1].argmax(-1)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        out.append(nxt[:, None])
        start += ids.shape[1]
        ids, pos = nxt[:, None], pos[:, -1:] + 1
        if eos_token_id is not None and bool(done.all()):
            break
    return torch.cat(out, dim=1)

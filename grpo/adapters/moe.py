"""DeepSeekMoE conversion of a dense SwiGLU MLP, aux-loss-free balancing, and routing replay.

Algorithm (DeepSeek-V3, arXiv:2412.19437, §2.1.2; DeepSeekMoE, arXiv:2401.06066):

    s_{t,i}  = sigmoid(u_t · e_i)                          router affinity, fp32        [N, E]
    chosen_t = TopK_i(s_{t,i} + b_i, k)                     b: per-expert bias, routing only
    g_{t,i}  = k · s_{t,i} / Σ_{j∈chosen_t} s_{t,j}          for i ∈ chosen_t, else 0
    y_t      = Σ_{j<S} FFN^shared_j(u_t) + Σ_i g_{t,i} FFN_i(u_t)

The bias never enters g (so no gradient reaches it). After every optimizer step
``b_i += γ · sign(mean_load − load_i)`` with the loads counted since the previous step
(`after_optimizer_step`). Optional sequence-wise balance loss (V3 eq. 17-20):
``L = α · mean_b Σ_i f_i P_i`` with ``f_i = E/(k·T) Σ_t 1[i ∈ chosen_t]`` and
``P_i = 1/T Σ_t s_{t,i}/Σ_j s_{t,j}``, over the real (unpadded) tokens of each sequence.

The routed scaling factor is ``k`` (V3 uses a tuned 2.5): with equal affinities every chosen expert
then gets weight exactly 1, which is what makes the conversion below exact.

Conversion (fine-grained splitting of the dense intermediate neurons, grouped as in MoEfication,
arXiv:2110.01786, and LLaMA-MoE, arXiv:2406.16554). The dense SwiGLU MLP is
``y = W_d (silu(W_g u) ⊙ W_u u)``, a sum over its I neurons, so any partition of the neurons into
groups gives experts whose outputs sum to the dense output.

1. Shared expert: neurons ranked by the weight-space proxy ``‖W_g[j]‖·‖W_u[j]‖·‖W_d[:, j]‖``; the top
   ``I − E·d_e`` (``d_e = I // (E + S)``) are always on.
2. Routed experts: balanced spherical k-means of the remaining gate rows ``W_g[j]/‖W_g[j]‖`` into E
   clusters of exactly d_e neurons (`balanced_kmeans`: centroids seeded per layer, each round assigns
   neurons to their most similar centroid that still has room, best matches first). Neurons whose gate
   rows point the same way fire on the same inputs, so an expert is a group of co-activating neurons.
3. Router: expert e's row is the mean of its neurons' gate rows, ``r_e = mean_{j∈e} W_g[j]``, so its logit
   ``u·r_e`` is the mean gate pre-activation of the expert's neurons: an expert scores high on inputs that
   open its gates. On SmolLM2-135M this gives a per-token std of the sigmoid scores across 8 experts of
   0.02-0.20 (by layer) against 0.0002-0.001 for a tiny random router. These scores carry a per-expert
   offset (hidden states share a large mean direction), so without a bias nearly every token picks the
   same two experts: `calibrate_bias` (below) or the online bias update removes that offset.

    exact   : top_k == num_experts (any num_shared): the router starts at zero, all affinities are 0.5 and
              every expert gets weight exactly 1, so with steps 1-2 being a permutation of the neurons the
              converted layer computes the dense MLP up to float rounding (tests: max |Δlogits| ≤ 1e-4, fp32).
    inexact : top_k < num_experts drops (E − k)·d_e neurons per token; `dense_deviation` measures it.

Bias calibration (optional, ``calibrate_bias_steps`` > 0, inexact configurations only): DeepSeek-V3's
sign rule above, applied before training on the MLP inputs of a calibration batch, with γ decaying
geometrically from 1e-2 to 1e-4 over the steps, on fixed scores (the router is not trained here). One
forward of the calibration batch calibrates the layers in order, each on the inputs it receives from the
already calibrated layers before it. It is the paper's balancing rule started early, not another method:
a router trained from scratch starts near-symmetric and so balanced, a converted one does not.

Compute is "dense-masked": all routed neurons are evaluated and scaled by their expert's g (zero if
not chosen). FLOPs equal the dense MLP's; for 100M-scale models this beats a per-expert gather loop,
whose launch overhead dominates. The routing maths, balancing and replay do not depend on it.

Routing replay ("R3"): with ``routing_replay(model, "record")`` every forward appends the experts
chosen for each real token; ``routing_replay(model, "replay", routes)`` makes the update forward use
those experts (gate weights still come from the current router, so the router keeps its gradient).
The alignment contract is documented on `RecordedRoutes`. The rollout engine (grpo.engine.moe_decode) runs
no HF forward: it records the routes of its own steps and hands them to the open block
(`RoutingState.add_recorded`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MoEConfig:
    num_experts: int = 8
    top_k: int = 2
    num_shared: int = 1
    # γ of the online update, in sigmoid-score units (DeepSeek-V3: 1e-3).
    bias_update_rate: float = 1e-3
    balance_loss_coef: float = 0.0
    routing_replay: bool = True
    # sign-rule steps on a calibration batch at conversion (0 = off, the paper's zero start); the GRPO trainer
    # passes its first 64 training prompts. Needs calibration tokens when > 0.
    calibrate_bias_steps: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "MoEConfig":
        names = {f.name for f in fields(cls)}
        for k in d:
            if k not in names:
                raise ValueError(f"unknown model.adapter.moe key {k!r}; valid keys: {sorted(names)}")
        cfg = cls(**d)
        for name in ("num_experts", "top_k", "num_shared", "calibrate_bias_steps"):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"moe.{name} must be an integer, got {v!r}")
        for name in ("bias_update_rate", "balance_loss_coef"):
            v = getattr(cfg, name)
            try:  # YAML reads 1e-3 (no dot) as a string
                f = float(v) if not isinstance(v, bool) else None
            except (TypeError, ValueError):
                f = None
            if f is None or not (math.isfinite(f) and f >= 0):
                raise ValueError(f"moe.{name} must be a number >= 0, got {v!r}")
            setattr(cfg, name, f)
        if cfg.num_experts < 1:
            raise ValueError(f"moe.num_experts must be >= 1, got {cfg.num_experts}")
        if not 1 <= cfg.top_k <= cfg.num_experts:
            raise ValueError(f"moe.top_k must be in [1, num_experts={cfg.num_experts}], got {cfg.top_k}")
        if cfg.num_shared < 0:
            raise ValueError(f"moe.num_shared must be >= 0, got {cfg.num_shared}")
        if cfg.calibrate_bias_steps < 0:
            raise ValueError(f"moe.calibrate_bias_steps must be >= 0 (0 = off), got {cfg.calibrate_bias_steps}")
        if not isinstance(cfg.routing_replay, bool):
            raise ValueError(f"moe.routing_replay must be true or false, got {cfg.routing_replay!r}")
        return cfg


# γ at the first and last step of `calibrate_bias` (sigmoid-score units): 10x DeepSeek-V3's rate down to 0.1x.
# A bias can move at most Σγ_t ≈ 2.1e-3·steps (0.43 for 200 steps); SmolLM2's converted routers needed |b| ≤ 0.37
CALIBRATION_GAMMA = (1e-2, 1e-4)


def balanced_kmeans(w: torch.Tensor, k: int, seed: int, iters: int = 10) -> torch.Tensor:
    """Spherical k-means of the rows of w [n, D] into k clusters of exactly n/k rows; returns [n] labels.

    Each round assigns by a greedy stable matching: every unassigned row proposes to its most similar
    centroid that still has room, each centroid keeps its most similar proposers up to its room, the rest
    propose again (at most k passes); then centroids become the normalised means of their rows."""
    n = w.shape[0]
    if n % k:
        raise ValueError(f"balanced_kmeans needs rows ({n}) divisible by clusters ({k})")
    cap = n // k
    wn = F.normalize(w, dim=1)                                                   # [n, D]
    gen = torch.Generator().manual_seed(seed)
    cent = wn[torch.randperm(n, generator=gen)[:k].to(w.device)]                # [k, D]
    labels = torch.empty(n, dtype=torch.long, device=w.device)
    for _ in range(iters):
        sim = wn @ cent.t()                                                      # [n, k]
        labels.fill_(-1)
        room = torch.full((k,), cap, dtype=torch.long, device=w.device)
        while bool((labels < 0).any()):
            free = (labels < 0).nonzero().squeeze(1)
            best = sim[free].masked_fill(room[None] == 0, float("-inf")).argmax(1)
            for c in best.unique().tolist():
                cand = free[best == c]
                take = cand[torch.argsort(sim[cand, c], descending=True)[:int(room[c])]]
                labels[take] = c
                room[c] -= take.numel()
        cent = F.normalize(torch.stack([wn[labels == c].mean(0) for c in range(k)]), dim=1)
    return labels


def expert_sizes(intermediate_size: int, cfg: MoEConfig) -> tuple[int, int]:
    """(d_e neurons per routed expert, neurons of the shared expert); all I neurons are used."""
    d_e = intermediate_size // (cfg.num_experts + cfg.num_shared)
    shared = intermediate_size - cfg.num_experts * d_e
    if d_e == 0:
        raise ValueError(f"intermediate_size {intermediate_size} too small for {cfg.num_experts} experts")
    if cfg.num_shared == 0 and shared:
        raise ValueError(f"num_shared=0 needs intermediate_size ({intermediate_size}) divisible by "
                         f"num_experts ({cfg.num_experts})")
    return d_e, shared


class RoutingState:
    """Shared by all MoE layers of one model (not a module, never saved).

    token_mask: [B, L] bool real tokens of the current forward (None = all real), set by a pre-hook.
    """

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.mode = "off"
        self.token_mask: torch.Tensor | None = None
        self.count_loads = True
        self._calls: list[dict] = []        # record: one entry per generate call (prefill + decodes)
        self.replay: RecordedRoutes | None = None
        self.replay_idx: torch.Tensor | None = None    # [n_layers, B, L, k] for the current forward
        self.replay_valid: torch.Tensor | None = None  # [B, L] bool

    def add_recorded(self, routes: "RecordedRoutes") -> bool:
        """Routes recorded outside the HF forward (the rollout engine) for the open `routing_replay(model,
        "record")` block, as one more call after those already recorded; False (nothing kept) when no block
        records."""
        if self.mode != "record":
            return False
        self._calls.append({"packed": routes})
        return True


@dataclass
class RecordedRoutes:
    """Experts chosen during rollout, per sequence row and real token.

    routes:  [N, T, n_layers, k] int16, the routes of row n's real tokens packed left in position order
    lengths: [N] long, number of recorded tokens per row

    Contract. Rows are numbered in the order the recording forwards saw them: a forward with an empty
    KV cache (prefill) starts ``B`` new rows, later forwards with a cache extend those rows (decode).
    With the HF sampler this is exactly the `RolloutBatch` row order. "Real" tokens are those with
    attention_mask == 1 (all tokens if no mask is passed). During replay, a forward over ``B`` rows
    must use ``routes.select(row_indices)`` with the same ``B`` rows in the same order; the j-th real
    token of a row (any padding side) gets the j-th recorded route. Tokens past the recorded length
    (the last sampled token is never fed to the model during rollout; post-EOS padding is) fall back
    to the router's own choice; their outputs do not affect the log-probs of sampled tokens.
    """

    routes: torch.Tensor
    lengths: torch.Tensor

    @property
    def num_rows(self) -> int:
        return self.routes.shape[0]

    def select(self, rows) -> "RecordedRoutes":
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.routes.device)
        return RecordedRoutes(self.routes[rows], self.lengths[rows])

    @staticmethod
    def cat(parts: list["RecordedRoutes"]) -> "RecordedRoutes":
        t = max(p.routes.shape[1] for p in parts)
        padded = [F.pad(p.routes, (0, 0, 0, 0, 0, t - p.routes.shape[1])) for p in parts]
        return RecordedRoutes(torch.cat(padded), torch.cat([p.lengths for p in parts]))


def route(flat: torch.Tensor, router_weight: torch.Tensor, bias: torch.Tensor, k: int):
    """Router affinities and the experts chosen: flat [N, D] -> (s = sigmoid(u·e_i) [N, E] fp32, computed in
    fp32 as DeepSeek-V3; TopK_i(s + b, k) indices [N, k], torch.topk's order). The one routing function of the
    HF forward and the rollout engine's unfused path."""
    with torch.autocast(flat.device.type, enabled=False):
        scores = torch.sigmoid(F.linear(flat.float(), router_weight.float()))     # [N, E]
    return scores, torch.topk(scores.detach() + bias, k, dim=-1).indices


def gate_weights(scores: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """g: scores [N, E], chosen experts idx [N, k] -> [N, E], k · s_i / Σ_{j∈chosen} s_j on the chosen, else 0."""
    w = scores.gather(1, idx)
    w = w / w.sum(dim=-1, keepdim=True) * k                                      # [N, k]
    return torch.zeros_like(scores).scatter(1, idx, w)


class DeepSeekMoE(nn.Module):
    """Routed + shared SwiGLU experts replacing one dense MLP. x: [B, L, D] -> [B, L, D]."""

    def __init__(self, hidden_size: int, intermediate_size: int, cfg: MoEConfig, act_fn, layer: int,
                 state: RoutingState, dtype=None):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.state = state
        self.act_fn = act_fn
        self.expert_dim, shared = expert_sizes(intermediate_size, cfg)
        routed = cfg.num_experts * self.expert_dim
        kw = dict(bias=False, dtype=dtype)
        self.router = nn.Linear(hidden_size, cfg.num_experts, **kw)
        # routed neurons, expert e owns rows [e*d_e, (e+1)*d_e)
        self.gate_proj = nn.Linear(hidden_size, routed, **kw)
        self.up_proj = nn.Linear(hidden_size, routed, **kw)
        self.down_proj = nn.Linear(routed, hidden_size, **kw)
        self.shared_dim = shared
        if shared:
            self.shared_gate_proj = nn.Linear(hidden_size, shared, **kw)
            self.shared_up_proj = nn.Linear(hidden_size, shared, **kw)
            self.shared_down_proj = nn.Linear(shared, hidden_size, **kw)
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.num_experts, dtype=torch.float32))
        # statistics since the last optimizer step: [load per expert (E) | entropy sum | tokens];
        # a plain attribute, not a buffer, so it is never saved nor touched by from_pretrained
        self.stats: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None
        self.last_stats: dict[str, float] = {}

    @torch.no_grad()
    def copy_neurons(self, mlp: nn.Module, shared: torch.Tensor, routed: torch.Tensor) -> None:
        """Dense neurons `routed` (expert-major) into the routed experts, `shared` into the shared expert;
        the balancing bias starts at zero."""
        wg, wu, wd = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
        self.gate_proj.weight.copy_(wg[routed])
        self.up_proj.weight.copy_(wu[routed])
        self.down_proj.weight.copy_(wd[:, routed])
        if self.shared_dim:
            self.shared_gate_proj.weight.copy_(wg[shared])
            self.shared_up_proj.weight.copy_(wu[shared])
            self.shared_down_proj.weight.copy_(wd[:, shared])
        self.e_score_correction_bias.zero_()

    @torch.no_grad()
    def init_from_dense(self, mlp: nn.Module) -> None:
        wg, wu, wd = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight  # [I,D] [I,D] [D,I]
        score = wg.float().norm(dim=1) * wu.float().norm(dim=1) * wd.float().norm(dim=0)
        order = torch.argsort(score, descending=True)
        shared, rest = order[:self.shared_dim], order[self.shared_dim:]
        e, d_e = self.cfg.num_experts, self.expert_dim
        assign = balanced_kmeans(wg[rest].float(), e, seed=1000 + self.layer)           # [E*d_e] in [0, E)
        routed = rest[torch.argsort(assign, stable=True)]  # expert-major: expert i owns rows [i*d_e, (i+1)*d_e)
        self.copy_neurons(mlp, shared, routed)
        if self.cfg.top_k == e:
            self.router.weight.zero_()  # all experts on, all gates exactly 1: the exact configuration
        else:  # logit_e(u) = mean gate pre-activation of expert e's neurons
            self.router.weight.copy_(wg[routed].float().view(e, d_e, -1).mean(1))

    @torch.no_grad()
    def calibrate_bias(self, x: torch.Tensor, steps: int) -> None:
        """DeepSeek-V3's sign rule on fixed inputs x [N, D] (real tokens only): `steps` updates of
        b_i += γ_t·sign(mean_load − load_i), γ_t decaying geometrically from 1e-2 to 1e-4."""
        e, k = self.cfg.num_experts, self.cfg.top_k
        if steps <= 0 or k == e or x.shape[0] == 0:
            return
        scores = torch.sigmoid(F.linear(x.float(), self.router.weight.float()))         # [N, E]
        bias = self.e_score_correction_bias
        for t in range(steps):
            gamma = CALIBRATION_GAMMA[0] * (CALIBRATION_GAMMA[1] / CALIBRATION_GAMMA[0]) ** (t / max(steps - 1, 1))
            load = torch.bincount(torch.topk(scores + bias, k, dim=-1).indices.reshape(-1), minlength=e)
            load = load.float()
            bias += gamma * torch.sign(load.mean() - load)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        k = self.cfg.top_k
        flat = x.reshape(-1, d)                                                  # [N, D]
        scores, own = route(flat, self.router.weight, self.e_score_correction_bias, k)
        idx = own
        st = self.state
        if st.mode == "replay" and st.replay_idx is not None:
            rep = st.replay_idx[self.layer].reshape(-1, k).long()
            idx = torch.where(st.replay_valid.reshape(-1, 1), rep, own)
        elif st.mode == "record":
            st._calls[-1]["routes"][self.layer].append(own.view(b, l, k).to(torch.int16))
        y = self.experts(flat, gate_weights(scores, idx, k))
        if torch.is_grad_enabled():
            self._account(scores, own, b, l)
        return y.view(b, l, d)

    def experts(self, flat: torch.Tensor, gates: torch.Tensor, w=None) -> torch.Tensor:
        """Shared + gated routed experts, dense-masked: flat [N, D], gates [N, E] (g_{t,i}, zero for experts
        not chosen) -> [N, D]. `w` maps a parameter to the tensor to compute with (the rollout engine's
        low-precision shadows; default: the parameter)."""
        w = w or (lambda p: p)
        e = self.cfg.num_experts
        h = self.act_fn(F.linear(flat, w(self.gate_proj.weight))) * F.linear(flat, w(self.up_proj.weight))  # [N, E*d_e]
        h = (h.view(-1, e, self.expert_dim) * gates.unsqueeze(-1).to(h.dtype)).view(-1, e * self.expert_dim)
        y = F.linear(h, w(self.down_proj.weight))
        if self.shared_dim:
            y = y + F.linear(self.act_fn(F.linear(flat, w(self.shared_gate_proj.weight)))
                             * F.linear(flat, w(self.shared_up_proj.weight)), w(self.shared_down_proj.weight))
        return y

    def engine_mlp(self, ops):
        """The rollout engine's hook for this layer (grpo.engine.moe_decode.MoEMLP): routing and experts on
        the engine's buffers, routes recorded per cache slot for routing replay."""
        from grpo.engine.moe_decode import MoEMLP
        return MoEMLP(self, ops)

    def _account(self, scores: torch.Tensor, own: torch.Tensor, b: int, l: int) -> None:
        """Count loads / entropy of the router's own choice; build the balance loss. Grad forwards only."""
        e, k = self.cfg.num_experts, self.cfg.top_k
        mask = self.state.token_mask
        real = mask.reshape(-1).float() if mask is not None and mask.numel() == b * l else scores.new_ones(b * l)
        onehot = torch.zeros_like(scores).scatter(1, own, 1.0)                   # [N, E]
        p = scores / scores.sum(dim=-1, keepdim=True)                            # [N, E]
        with torch.no_grad():
            if self.stats is None:
                self.stats = torch.zeros(e + 2, dtype=torch.float32, device=scores.device)
            ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
            self.stats[:e] += (onehot * real[:, None]).sum(0)
            self.stats[e] += (ent * real).sum()
            self.stats[e + 1] += real.sum()
        if self.cfg.balance_loss_coef > 0:
            r = real.view(b, l, 1)
            t = r.sum(1).clamp_min(1.0)                                          # [B, 1]
            f = (onehot.view(b, l, e) * r).sum(1) * e / (k * t)                  # [B, E]
            pm = (p.view(b, l, e) * r).sum(1) / t                                # [B, E]
            loss = self.cfg.balance_loss_coef * (f * pm).sum(-1).mean()
            self.aux_loss = loss  # the last grad forward's; `aux_loss(model)` takes it (no graph piles up)

    @torch.no_grad()
    def update_bias(self) -> None:
        """b_i += γ·sign(mean_load − load_i); snapshot and reset the statistics."""
        e = self.cfg.num_experts
        if self.stats is None or float(self.stats[e + 1]) == 0:
            return
        load, n = self.stats[:e], float(self.stats[e + 1])
        mean = load.mean()
        self.last_stats = {
            "load_max_over_mean": float(load.max() / mean.clamp_min(1e-12)),
            "router_entropy": float(self.stats[e]) / n,
        }
        self.e_score_correction_bias += self.cfg.bias_update_rate * torch.sign(mean - load)
        self.stats.zero_()

    @torch.no_grad()
    def dense_deviation(self, mlp: nn.Module, x: torch.Tensor) -> float:
        """max |MoE(x) − MLP(x)| / max |MLP(x)| on hidden states x [B, L, D] (routing mode unchanged)."""
        ref = mlp(x)
        return float((self(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def moe_layers(model: nn.Module) -> list[DeepSeekMoE]:
    return [m for m in model.modules() if isinstance(m, DeepSeekMoE)]


def convert_moe(model: nn.Module, cfg: MoEConfig, init: bool = True) -> RoutingState:
    """Replace every decoder layer's `mlp` with a DeepSeekMoE (weights copied from it when init)."""
    layers = model.model.layers
    state = RoutingState(len(layers))
    c = model.config
    for i, layer in enumerate(layers):
        dense = layer.mlp
        w = dense.gate_proj.weight
        moe = DeepSeekMoE(c.hidden_size, c.intermediate_size, cfg, dense.act_fn, i, state, dtype=w.dtype)
        moe.to(w.device)
        if init:
            moe.init_from_dense(dense)
        layer.mlp = moe
    # the hook finds the state on the module it runs on, so a deepcopy (reference model) gets its own
    model.model._grpo_routing = state
    model.model.register_forward_pre_hook(_routing_pre_hook, with_kwargs=True)
    return state


@dataclass
class BiasCalibration:
    """The calibration batch of `calibrate_moe_bias`.

    prompts: B token-id lists. With `params` (a `grpo.rollout.SamplingParams`) and `tokenizer`, the converted
    model also samples one continuation per prompt (HF sampler, RNG seeded with `seed` and restored after),
    and a second pass calibrates on prompt + continuation: the token mix the online rule sees in GRPO.
    """

    prompts: list[list[int]]
    tokenizer: Any = None
    params: Any = None
    seed: int = 0


@torch.no_grad()
def calibrate_moe_bias(model: nn.Module, calib: BiasCalibration, steps: int | None = None) -> None:
    """Set every MoE layer's bias by `calibrate_bias` (cfg's calibrate_bias_steps unless `steps`) on the
    real tokens of `calib` it receives in one forward, layer after layer; see `BiasCalibration`."""
    layers = moe_layers(model)
    if not layers:
        return
    pad = 0
    if calib.tokenizer is not None and calib.tokenizer.pad_token_id is not None:
        pad = calib.tokenizer.pad_token_id
    _calibration_forward(model, calib.prompts, pad, steps)
    if calib.params is None or calib.tokenizer is None:
        return
    from grpo.rollout import HFSampler
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(calib.seed)
        rb = HFSampler(model, calib.tokenizer, batch_size=len(calib.prompts)).generate(calib.prompts, 1, calib.params)
    seqs = [p + c[m.bool()].tolist() for p, c, m in zip(rb.prompt_ids, rb.completion_ids, rb.completion_mask)]
    _calibration_forward(model, seqs, pad, steps)


def _calibration_forward(model: nn.Module, seqs: list[list[int]], pad: int, steps: int | None) -> None:
    width = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)                # right-padded [B, T]
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, q in enumerate(seqs):
        ids[i, :len(q)] = torch.tensor(q, dtype=torch.long)
        mask[i, :len(q)] = 1

    def hook(module, args):
        x = args[0].reshape(-1, args[0].shape[-1])                               # [B*T, D]
        real = module.state.token_mask
        if real is not None and real.numel() == x.shape[0]:
            x = x[real.reshape(-1).to(x.device)]
        module.calibrate_bias(x, module.cfg.calibrate_bias_steps if steps is None else steps)

    hooks = [m.register_forward_pre_hook(hook) for m in moe_layers(model)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        model(input_ids=ids.to(device), attention_mask=mask.to(device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()


def _routing_pre_hook(module, args, kwargs):
    """Runs before every forward of the decoder body: note the real tokens, start/extend recorded rows."""
    state = module._grpo_routing
    ids = kwargs.get("input_ids", args[0] if args else None)
    emb = kwargs.get("inputs_embeds")
    shape = ids.shape if ids is not None else emb.shape[:2]
    b, l = shape[0], shape[1]
    mask = kwargs.get("attention_mask")
    tok = mask[:, -l:].bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
    state.token_mask = tok
    past = kwargs.get("past_key_values", kwargs.get("cache"))  # transformers >= 5.24 names it `cache`
    fresh = past is None or past.get_seq_length() == 0
    if state.mode == "record":
        if fresh:
            state._calls.append({"masks": [], "routes": [[] for _ in range(state.num_layers)]})
        device = ids.device if ids is not None else emb.device
        state._calls[-1]["masks"].append(tok if tok is not None else torch.ones(b, l, dtype=torch.bool,
                                                                                   device=device))
    elif state.mode == "replay":
        if not fresh:
            raise RuntimeError("routing replay is for full forwards (no KV cache)")
        _prepare_replay(state, tok, b, l)
    return None


def _prepare_replay(state: RoutingState, tok: torch.Tensor | None, b: int, l: int) -> None:
    routes = state.replay
    if routes.num_rows != b:
        raise ValueError(f"replay got {routes.num_rows} recorded rows for a forward of {b} rows; "
                         "pass routes.select(row_indices) for each micro-batch")
    dev = routes.routes.device
    tok = tok.to(dev) if tok is not None else torch.ones(b, l, dtype=torch.bool, device=dev)
    rank = tok.long().cumsum(1) - 1                                              # [B, L]
    valid = tok & (rank < routes.lengths[:, None])
    t = routes.routes.shape[1]
    gather = rank.clamp(0, max(t - 1, 0))
    r = routes.routes[torch.arange(b, device=dev)[:, None], gather]              # [B, L, n_layers, k]
    state.replay_idx = r.permute(2, 0, 1, 3)
    state.replay_valid = valid


def pack_routes(mask: torch.Tensor, routes: torch.Tensor) -> RecordedRoutes:
    """mask [B, T] bool real tokens, routes [B, T, n_layers, k] -> `RecordedRoutes` (real tokens packed left,
    in position order)."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)            # real tokens first
    lengths = mask.sum(1)
    t = int(lengths.max()) if lengths.numel() else 0
    packed = routes.gather(1, order[:, :, None, None].expand_as(routes))[:, :t]
    return RecordedRoutes(packed, lengths)


def _finish_call(call: dict) -> RecordedRoutes:
    if "packed" in call:
        return call["packed"]
    mask = torch.cat(call["masks"], dim=1)                                       # [B, T]
    r = torch.stack([torch.cat(per, dim=1) for per in call["routes"]], dim=2)    # [B, T, n_layers, k]
    return pack_routes(mask, r)


@contextlib.contextmanager
def routing_replay(model: nn.Module, mode: str, routes: RecordedRoutes | None = None):
    """"record": yields a list that holds one `RecordedRoutes` after the block (all rows recorded);
    "replay": forwards in the block use `routes`; "off": own routing. No-op for dense models."""
    layers = moe_layers(model)
    state = layers[0].state if layers else None
    if mode not in ("record", "replay", "off"):
        raise ValueError(f"routing_replay mode must be record|replay|off, got {mode!r}")
    out: list[RecordedRoutes] = []
    if state is None:
        yield out
        return
    if mode == "replay" and routes is None:
        raise ValueError("routing_replay(model, 'replay', routes) needs the recorded routes")
    prev = state.mode
    state.mode, state.replay, state._calls = mode, routes, []
    try:
        yield out
        if mode == "record" and state._calls:
            out.append(RecordedRoutes.cat([_finish_call(c) for c in state._calls]))
    finally:
        state.mode, state.replay, state._calls = prev, None, []
        state.replay_idx = state.replay_valid = None

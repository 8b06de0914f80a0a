"""EngineSampler: the fast rollout backend (static KV cache, CUDA-graph decode, shared prompt prefill).

How one `generate` call runs, per chunk of at most `max_batch` rows (N = prompts * G):
  1. prefill: the B prompts, left-padded to P, go through the model once (not G times); each layer
     writes its K/V into the static cache rows of all G samples of that prompt.
  2. the first token of every row is drawn from the prefill logits.
  3. decode: max_new_tokens - 1 steps of one token for all N rows. Every step writes the same cache
     slot (P + t) for all rows, so the step has fixed shapes and is captured once per attention
     length bucket (multiples of `bucket` slots) as a CUDA graph and replayed; sampling (Gumbel-max),
     EOS handling and the output writes happen inside the graph, with no host sync per token (with the
     fused decode step, in two launches: grpo.engine.fused_sampling).
  4. rows that emitted EOS keep running but write padding; the loop stops early once every row is
     done (checked every few steps, only when EOS is allowed).
  MoE models (grpo.adapters.moe) keep the experts chosen at every cache slot; inside a
  `routing_replay(model, "record")` block a call hands them over as the HF sampler's recording would.

The engine reads the training model's own parameter tensors: no copy, no weight sync. CUDA graphs
hold their addresses, which stay valid because optimizers update parameters in place. The model runs
in eval mode under no_grad and its train/eval mode is restored afterwards.
"""
from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F

from grpo.cuda_streams import graph_stream
from grpo.engine.attention import DecodeContext, GQAAttention, PrefillContext, attention_for
from grpo.engine.decode_attention import triton_available
from grpo.engine.fused_decode import norm_gate_up
from grpo.engine.fused_sampling import commit, head_partials
from grpo.engine.ops import Ops
from grpo.rollout import (LazyTexts, RolloutBatch, SamplingParams, _pad_right, check_fits, context_length,
                          finish_rows)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


def _eps(norm) -> float:
    return getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))


class Decoder:
    """The HF model's decoder stack run layer by layer on the engine's buffers."""

    def __init__(self, model, ops: Ops):
        cfg = model.config
        self.ops = ops
        base = model.get_decoder()
        self.embed = base.embed_tokens
        self.layers = list(base.layers)
        self.final_norm = base.norm
        self.rotary = base.rotary_emb
        self.lm_head = model.get_output_embeddings()
        # MLPs with an engine hook (grpo.adapters.moe's DeepSeekMoE -> grpo.engine.moe_decode.MoEMLP), else None
        self.mlp_hooks = [layer.mlp.engine_mlp(ops) if callable(getattr(layer.mlp, "engine_mlp", None)) else None
                          for layer in self.layers]
        self.route_cache = None  # MoE: experts chosen per cache slot [rows, slots, n_layers, k] (allocate_routes)
        moe = [hook for hook in self.mlp_hooks if hook is not None]
        self.routing_state = moe[0].m.state if moe else None  # grpo.adapters.moe.RoutingState (record mode)
        self.attn = [attention_for(layer.self_attn, cfg, ops) for layer in self.layers]
        hooked = all(hasattr(layer.self_attn, "engine_attention") for layer in self.layers)
        base_type = cfg.model_type.removesuffix("_grpo")  # grpo.adapters' llama_grpo / qwen2_grpo (MoE-only)
        if base_type not in SUPPORTED_MODEL_TYPES and not hooked:
            raise NotImplementedError(
                f"engine supports {SUPPORTED_MODEL_TYPES} (or attention modules with engine_attention); "
                f"got model_type={cfg.model_type!r}: use sampling.backend: hf")
        self.gated_mlp = getattr(cfg, "hidden_act", "silu") in ("silu", "swish") and all(
            all(hasattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")) for layer in self.layers)
        # the attentions (GQAAttention, MLALatentAttention), MoE hooks and the gated MLP read weights only: no
        # module's forward runs (so no train/eval flag, dropout or hook can change what the engine computes);
        # an ungated MLP or another attention does
        self.reads_weights_only = (all(getattr(a, "reads_weights_only", False) for a in self.attn)
                                   and all(hook is not None or self.gated_mlp for hook in self.mlp_hooks))

    def allocate_routes(self, rows: int, slots: int) -> None:
        """MoE models: a route cache of this shape (kept when it has it; a new one is zeroed), each MoE layer
        writing its [rows, slots, k] view. No-op for models without MoE layers."""
        hooks = [h for h in self.mlp_hooks if h is not None]
        if not hooks or (self.route_cache is not None and self.route_cache.shape[:2] == (rows, slots)):
            return
        dev = self.ops.w(self.embed.weight).device
        self.route_cache = torch.zeros((rows, slots, len(self.layers), hooks[0].top_k), dtype=torch.int16,
                                       device=dev)
        for i, hook in enumerate(self.mlp_hooks):
            if hook is not None:
                hook.routes = self.route_cache[:, :, i]

    def release_routes(self) -> None:
        self.route_cache = None
        for hook in self.mlp_hooks:
            if hook is not None:
                hook.routes = None

    def recorded_routes(self, prompts: list[list[int]], g: int, p0: int, fed: int):
        """The chosen experts of the last call's rows as `grpo.adapters.RecordedRoutes` (device tensors): per
        row its real prompt slots (left-padded to p0), then the `fed` decoded tokens' slots [p0, p0 + fed)."""
        from grpo.adapters.moe import pack_routes

        n, t = len(prompts) * g, p0 + fed
        mask = torch.zeros((n, t), dtype=torch.bool)
        mask[:, p0:] = True
        for i, p in enumerate(prompts):
            mask[i * g:(i + 1) * g, p0 - len(p):p0] = True
        return pack_routes(mask.to(self.route_cache.device), self.route_cache[:n, :t])

    def refresh(self) -> None:
        """Recompute the weights the layers derive from the parameters (MLA's absorbed projections) in place;
        once per generate call, before the first step."""
        for a in self.attn:
            if callable(getattr(a, "refresh", None)):
                a.refresh()

    def _mlp(self, i: int, h, ctx, ops: Ops):
        mlp = self.layers[i].mlp
        if self.mlp_hooks[i] is not None:
            return self.mlp_hooks[i](h, ctx)
        if not self.gated_mlp:
            return mlp(h)
        w = ops.w
        act = ops.swiglu(F.linear(h, w(mlp.gate_proj.weight), w(mlp.gate_proj.bias)),
                         F.linear(h, w(mlp.up_proj.weight), w(mlp.up_proj.bias)))
        return F.linear(act, w(mlp.down_proj.weight), w(mlp.down_proj.bias))

    def hidden(self, ids: torch.Tensor, ctx, decode: bool, ops: Ops) -> torch.Tensor:
        """ids [n, t] -> final-normed hidden states [n, t, H]."""
        w = ops.w
        res = F.embedding(ids, w(self.embed.weight))
        first = self.layers[0].input_layernorm
        h = ops.rms_norm(res, w(first.weight), _eps(first))
        for i, layer in enumerate(self.layers):
            a = self.attn[i].decode(h, ctx) if decode else self.attn[i].prefill(h, ctx)
            post = layer.post_attention_layernorm
            res, h = ops.add_rms_norm(res, a, w(post.weight), _eps(post))
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.final_norm
            res, h = ops.add_rms_norm(res, self._mlp(i, h, ctx, ops), w(nxt.weight), _eps(nxt))
        return h

    def fusable(self) -> bool:
        """Whether `hidden_fused` can run this model: every attention has a fused decode step that accepts
        the layer (`decode_fused_residual`; GQAAttention.fusable, MLALatentAttention.fusable), and every MLP
        is a gated SiLU MLP without biases, weights contiguous, or an MoE hook that `fusable()` accepts."""
        w = self.ops.w
        if not all(callable(getattr(a, "decode_fused_residual", None)) and a.fusable() for a in self.attn):
            return False
        for layer, hook in zip(self.layers, self.mlp_hooks):
            if hook is not None:
                if not (callable(getattr(hook, "decode_fused_residual", None)) and hook.fusable()):
                    return False
                continue
            lins = (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj) if self.gated_mlp else ()
            if not lins or any(getattr(lin, "bias", None) is not None or not w(lin.weight).is_contiguous()
                               for lin in lins):
                return False
        return True

    def hidden_fused(self, ids: torch.Tensor, ctx: DecodeContext, final_norm: bool = True) -> torch.Tensor:
        """Decode step through the layers' fused paths: ids [N] -> final-normed hidden states [N, 1, H]
        (final_norm=False: the residual stream [N, H] before the final norm, for fused_sampling.head_partials).
        Dense layers: five launches (grpo.engine.fused_decode); the residual adds ride on the o/down GEMMs
        (in-place addmm). MLA attention: grpo.engine.mla_decode; MoE MLPs: grpo.engine.moe_decode."""
        w, ops = self.ops.w, self.ops
        x = F.embedding(ids, w(self.embed.weight))  # [N, H], the residual stream, updated in place
        for i, layer in enumerate(self.layers):
            self.attn[i].decode_fused_residual(x, layer.input_layernorm, ctx)
            mlp, post = layer.mlp, layer.post_attention_layernorm
            if self.mlp_hooks[i] is not None:
                self.mlp_hooks[i].decode_fused_residual(x, post, ctx)
                continue
            act = norm_gate_up(x, w(post.weight), _eps(post), w(mlp.gate_proj.weight), w(mlp.up_proj.weight))
            x.addmm_(act, w(mlp.down_proj.weight).t())
        if not final_norm:
            return x
        return ops.rms_norm(x, w(self.final_norm.weight), _eps(self.final_norm))[:, None]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.ops.w(self.lm_head.weight), self.ops.w(getattr(self.lm_head, "bias", None)))


PREFILL_BUCKET = 8  # prompt widths are rounded up to a multiple of this (one prefill graph per width)


class _Workspace:
    """Static buffers for one batch shape (rows, cache slots, max_new_tokens), and its CUDA graphs."""

    def __init__(self, decoder: Decoder, rows: int, slots: int, max_new: int, pad_id: int, eos_ids):
        w = decoder.ops.w(decoder.embed.weight)
        dev, dtype = w.device, w.dtype
        self.rows, self.slots, self.max_new, self.pad_id = rows, slots, max_new, pad_id
        self.kv = None  # GQA layers: every K/V cache is a slice of this one flat buffer (EngineSampler.scratch)
        if decoder.attn and all(isinstance(a, GQAAttention) for a in decoder.attn):
            sizes = [a.kv_numel(rows, slots) for a in decoder.attn]
            self.kv = torch.zeros(sum(sizes), dtype=dtype, device=dev)
            for a, part in zip(decoder.attn, self.kv.split(sizes)):
                a.allocate(rows, slots, part)
        else:
            for a in decoder.attn:
                a.allocate(rows, slots)
        cos, sin = decoder.rotary(torch.empty(0, dtype=dtype, device=dev),
                                  torch.arange(slots, device=dev)[None])
        self.cos_table, self.sin_table = cos[0], sin[0]  # [slots, D]
        self.eos_mask = torch.zeros(w.shape[0], dtype=torch.bool, device=dev)  # [V]
        self.eos_mask[sorted(eos_ids)] = True
        self.tok = torch.zeros(rows, dtype=torch.long, device=dev)  # input token of the next step
        self.pos = torch.zeros(rows, dtype=torch.long, device=dev)  # its RoPE position
        self.done = torch.zeros(rows, dtype=torch.bool, device=dev)
        # cache slot it is written to (self.slot, below) and output column of the next token (self.out_idx)
        # the fused sampler advances both in one launch: they are views of one tensor
        self.counters = torch.zeros(2, dtype=torch.long, device=dev)
        self.slot, self.out_idx = self.counters[0:1], self.counters[1:2]
        self.seed = torch.zeros(1, dtype=torch.long, device=dev)  # fused sampler's noise key: seed + column
        self.out_tok = torch.full((rows, max_new), pad_id, dtype=torch.long, device=dev)
        self.out_logp = torch.zeros((rows, max_new), dtype=torch.float32, device=dev)
        self.mask = torch.full((rows, slots), float("-inf"), dtype=dtype, device=dev)  # [N, S] additive
        self.graphs: dict = {}
        self.inputs: dict = {}  # static input buffers of the prefill graphs, by key
        self.pool = None


class EngineSampler:
    """Static-cache, CUDA-graph rollout backend implementing `grpo.rollout.Sampler`.

    max_batch:   rows decoded together (a multiple of group_size is used); more rows run in chunks
    max_seq_len: a cap on prompt + max_new_tokens (None: the model's context length,
                 `config.max_position_embeddings`, `grpo.rollout.context_length`). The cache is not
                 allocated to it: each call sizes the cache to what it needs (longest prompt of the chunk
                 + max_new_tokens, rounded up to `bucket`) and grows it when a later call needs more (a new
                 cache, rotary tables and graphs; `scratch` then hands out the new buffer)
    cuda_graphs: capture the decode step in CUDA graphs ("auto": on CUDA devices)
    compile:     fuse the small elementwise ops with torch.compile ("auto": on CUDA devices)
    bucket:      attention length granularity in cache slots (one graph per bucket)
    keep_cache:  keep the KV cache and graphs between calls (no re-capture; the cache stays allocated
                 during the policy update). False frees them after each call: lower peak memory in the
                 update, at the price of allocating and capturing again at every call
    attention_kernel: decode attention: "triton" (grpo.engine.decode_attention's kernel), "sdpa", or
                 "auto" (Triton on CUDA when it is importable, else SDPA)
    fused:       run the decode step's layers through grpo.engine.fused_decode (RMSNorm + q/k/v + RoPE +
                 cache write in one Triton kernel, RMSNorm + gate/up + SiLU in another, residual adds in
                 the o/down GEMMs: 5 launches per layer instead of ~13; MLA layers through
                 grpo.engine.mla_decode, MoE MLPs through grpo.engine.moe_decode). "auto": on CUDA with Triton, a
                 bf16/fp16 engine and a model `Decoder.fusable` accepts; True forces it (CPU only under
                 TRITON_INTERPRET=1, for tests)
    dtype:       compute dtype ("auto": bf16 for fp32 weights on CUDA, else the weights' dtype). When it
                 differs from the weights' dtype (fp32 master weights trained under autocast), the engine
                 keeps one low-precision shadow of each parameter, refreshed in place at every
                 `generate` call (one cast per parameter, ~1 ms for 135M); with bf16 weights it reads
                 the parameters themselves.
    fused_sampling: end each fused decode step with grpo.engine.fused_sampling (final RMSNorm + LM head +
                 Gumbel-max draw + the step's bookkeeping in two Triton launches, logits never written).
                 "auto": whenever the decode step is fused and the LM head has no bias; it serves calls
                 without top-k / top-p (the others take the unfused path). Same distribution as the
                 unfused sampler, its own random stream (Triton's Philox, seeded from torch's generator).
    """

    def __init__(self, model, tokenizer, max_batch: int = 256, max_seq_len: int | None = None,
                 cuda_graphs: bool | str = "auto", compile: bool | str = "auto", bucket: int = 64,
                 dtype: torch.dtype | str = "auto", keep_cache: bool = True, attention_kernel: str = "auto",
                 fused: bool | str = "auto", fused_sampling: bool | str = "auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len if max_seq_len is not None else context_length(model)
        self.bucket = bucket
        self.keep_cache = keep_cache
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs == "auto" else bool(cuda_graphs)
        self.prefill_graphs = self.cuda_graphs  # turned off alone if a prefill capture fails
        if self.cuda_graphs and not on_cuda:
            raise ValueError("cuda_graphs=True needs the model on a CUDA device")
        self.compile = on_cuda if compile == "auto" else bool(compile)
        param_dtype = next(model.parameters()).dtype
        if dtype == "auto":
            dtype = torch.bfloat16 if on_cuda and param_dtype == torch.float32 else param_dtype
        self.dtype = dtype
        shadows = {p: torch.empty_like(p, dtype=dtype, requires_grad=False)
                   for p in model.parameters() if p.is_floating_point() and p.dtype != dtype}
        if attention_kernel not in ("auto", "triton", "sdpa"):
            raise ValueError(f"attention_kernel must be 'auto', 'triton' or 'sdpa', got {attention_kernel!r}")
        if attention_kernel == "triton" and not (on_cuda and triton_available()):
            raise ValueError("attention_kernel='triton' needs a CUDA device and the triton package")
        self.attention_kernel = ("triton" if on_cuda and triton_available() else "sdpa") \
            if attention_kernel == "auto" else attention_kernel
        self.ops = Ops(compile=self.compile, shadows=shadows, triton_attention=self.attention_kernel == "triton")
        self.decoder = Decoder(model, self.ops)
        if fused == "auto":
            fused = (on_cuda and triton_available() and dtype in (torch.bfloat16, torch.float16)
                     and self.decoder.fusable())
        elif fused and not (triton_available() and self.decoder.fusable()):
            raise ValueError("fused=True needs triton and a model `Decoder.fusable` accepts: Llama/Qwen2-style "
                             "GQA (no q/k norms, no o bias, head_dim a power of two >= 32) or MLA with rotary "
                             "dims, and gated SiLU MLPs without bias or DeepSeekMoE layers")
        self.fused = bool(fused)
        head = self.decoder.lm_head
        head_ok = (self.fused and getattr(head, "bias", None) is None  # (fused implies triton)
                   and self.ops.w(head.weight).is_contiguous())
        if fused_sampling not in ("auto", True, False):
            raise ValueError(f"fused_sampling must be 'auto', True or False, got {fused_sampling!r}")
        if fused_sampling is True and not head_ok:
            raise ValueError("fused_sampling=True needs the fused decode step (fused=True) and an LM head "
                             "without bias")
        self.fused_sampling = head_ok if fused_sampling == "auto" else bool(fused_sampling)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self._ws: _Workspace | None = None
        self._chunk_routes = None  # MoE: RecordedRoutes of the last chunk, when recording (grpo.adapters.moe)
        self.profile = False  # when True, each call synchronizes and adds its phase times to .timings
        self.timings: dict[str, float] = {}

    def scratch(self) -> torch.Tensor | None:
        """The KV cache as one flat buffer (None before the first call, after `release`, or for caches that
        are not all GQA). What it holds is dead between `generate` calls: a call writes every slot it attends to
        unmasked (prompt by the prefill, then one slot per step), so the policy update may use it as scratch
        (`grpo.graphed` keeps its gradient checkpoints there). Write finite values only: the masked slots a
        call reads keep them, and the decode attention multiplies their values by a zero weight."""
        return None if self._ws is None else self._ws.kv

    def release(self) -> None:
        """Free the KV cache and the graphs (the next call allocates and captures again)."""
        self._ws = None
        for a in self.decoder.attn:
            a.release()
        self.decoder.release_routes()

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token slot takes, summed over layers: measured on the cache tensors the
        engine's layer attentions allocate, in the engine's dtype (the live cache when there is one,
        else a one-row, one-slot cache allocated for the measurement). GQA: 2 · n_kv · head_dim
        elements per layer; MLA: rank + n_kv · rope_dims."""
        total = 0
        for a in self.decoder.attn:
            tensors = a.cache_tensors()
            fresh = not tensors
            if fresh:
                a.allocate(1, 1)
                tensors = a.cache_tensors()
            for t in tensors:  # [rows, slots, ...]
                total += t.numel() * t.element_size() // (t.shape[0] * t.shape[1])
            if fresh:
                a.release()
        return total

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], group_size: int, params: SamplingParams) -> RolloutBatch:
        per_chunk = max(1, min(len(prompt_ids), self.max_batch // group_size))
        was_training = self.model.training
        # eval mode for module forwards (dropout); the switch walks every module (~1-5 ms per call on the
        # GPU host, twice per step), so it is skipped when the decoder calls none
        toggle = was_training and not self.decoder.reads_weights_only
        if toggle:
            self.model.eval()
        for p, shadow in self.ops.shadows.items():  # same addresses every call: graphs stay valid
            shadow.copy_(p.detach())
        if self.fused:
            self.decoder.refresh()
        routes = []  # MoE: the chunks' RecordedRoutes, when a routing_replay(model, "record") block is open
        try:
            chunks = []
            for i in range(0, len(prompt_ids), per_chunk):
                part = prompt_ids[i:i + per_chunk]
                real = len(part) * group_size
                part = part + [part[-1]] * (per_chunk - len(part))  # keep the graphs' row count
                ids, mask, logp, trunc = self._generate_chunk(part, group_size, params)
                chunks.append((ids[:real], mask[:real], logp[:real], trunc[:real]))
                if self._chunk_routes is not None:
                    routes.append(self._chunk_routes.select(range(real)))
        finally:
            if toggle:
                self.model.train(was_training)
            if not self.keep_cache:
                self.release()
        width = max(c[0].shape[1] for c in chunks)
        ids = torch.cat([_pad_right(c[0], width, self.pad_id) for c in chunks])
        mask = torch.cat([_pad_right(c[1], width, 0) for c in chunks])
        logp = torch.cat([_pad_right(c[2], width, 0.0) for c in chunks])
        truncated = torch.cat([c[3] for c in chunks])
        rows = [p for p in prompt_ids for _ in range(group_size)]
        texts = LazyTexts(self.tokenizer, ids, mask)  # decoded when the verifiers first read them
        group = torch.arange(len(prompt_ids)).repeat_interleave(group_size)
        recorded = None
        if routes:
            from grpo.adapters.moe import RecordedRoutes

            recorded = RecordedRoutes.cat(routes)
            self.decoder.routing_state.add_recorded(recorded)  # for the open routing_replay(model, "record")
        return RolloutBatch(prompt_ids=rows, completion_ids=ids, completion_mask=mask, logprobs=logp,
                            texts=texts, group=group, truncated=truncated, routes=recorded)

    def _workspace(self, rows: int, need_slots: int, max_new: int) -> _Workspace:
        """The workspace for this call: the current one when it has these rows and max_new and at least
        `need_slots` cache slots (prefill width + max_new_tokens: the decode writes slots up to P + max_new - 2,
        one spare), else a new one of `need_slots` rounded up to `bucket` (at most `max_seq_len`). A new
        workspace is a new KV buffer, new rotary tables and no graphs: the old ones are dropped first
        (`release`), and `scratch` hands the new buffer to the update (grpo.graphed captures its graphs anew
        when the buffer changes)."""
        ws = self._ws
        if ws is None or ws.rows != rows or ws.max_new != max_new or ws.slots < need_slots:
            self.release()
            slots = -(-need_slots // self.bucket) * self.bucket
            if self.max_seq_len is not None:  # need_slots <= max_seq_len: check_fits, then _prefill_width
                slots = min(self.max_seq_len, slots)
            ws = self._ws = _Workspace(self.decoder, rows, slots, max_new, self.pad_id, self.eos_ids)
        return ws

    def _prefill_width(self, longest: int, max_new: int) -> int:
        """Width P the prompts are left-padded to: the longest prompt rounded up to PREFILL_BUCKET (one
        prefill graph per width bucket; on every device, so CPU tests run the shapes the GPU runs), but
        never so far that P + max_new passes `max_seq_len` (a prompt that fits must not fail for padding)."""
        width = -(-longest // PREFILL_BUCKET) * PREFILL_BUCKET
        if self.max_seq_len is not None:
            width = max(longest, min(width, self.max_seq_len - max_new))
        return width

    def _generate_chunk(self, prompts: list[list[int]], g: int, params: SamplingParams):
        if min(len(p) for p in prompts) == 0:
            raise ValueError("empty prompt")
        t_max = params.max_new_tokens
        longest = max(len(p) for p in prompts)
        check_fits(longest, t_max, self.max_seq_len)
        p0 = self._prefill_width(longest, t_max)
        ws = self._workspace(len(prompts) * g, p0 + t_max, t_max)
        if self._fused_head(params):  # its noise key, from torch's generator: seeded runs repeat (drawn
            ws.seed.fill_(int(torch.randint(0, 2**31 - 1, (1,))))  # only then: other calls' streams unchanged)
        t0 = self._clock()
        self._prefill(ws, prompts, g, p0, params)
        t1 = self._clock()
        can_stop = params.min_new_tokens < t_max
        produced = 1
        for t in range(t_max - 1):
            length = min(-(-(p0 + t + 1) // self.bucket) * self.bucket, ws.slots)
            self._run_step(ws, length, params)
            produced += 1
            if can_stop and produced % 8 == 0 and produced >= params.min_new_tokens and bool(ws.done.all()):
                break
        if self.profile:
            t2 = self._clock()
            self.timings["prefill_s"] = self.timings.get("prefill_s", 0.0) + t1 - t0
            self.timings["decode_s"] = self.timings.get("decode_s", 0.0) + t2 - t1
        ids, mask, truncated = finish_rows(ws.out_tok[:, :produced].cpu(), self.eos_ids, self.pad_id, t_max)
        logp = ws.out_logp[:, : ids.shape[1]].cpu() * mask
        self._chunk_routes = None  # MoE routes of this chunk (its last sampled token is never fed)
        state = self.decoder.routing_state
        if self.decoder.route_cache is not None and state is not None and state.mode == "record":
            self._chunk_routes = self.decoder.recorded_routes(prompts, g, p0, produced - 1)
        return ids, mask, logp, truncated

    def _clock(self) -> float:
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _prefill(self, ws: _Workspace, prompts: list[list[int]], g: int, p0: int, params: SamplingParams) -> None:
        """Run the B prompts once, fill the cache of all B*G rows, reset the decode state and draw every
        row's first token. The prompts are left-padded to p0 on the host; the rest (`_prefill_step`) is
        replayed from a CUDA graph per (B, p0, G, sampling parameters) when graphs are on."""
        b = len(prompts)
        self.decoder.allocate_routes(ws.rows, ws.slots)  # MoE: the route cache, shaped as the KV cache
        ids = torch.full((b, p0), self.pad_id, dtype=torch.long)
        valid = torch.zeros((b, p0), dtype=torch.bool)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at slot p0 - 1
            ids[i, p0 - len(p):] = torch.tensor(p)
            valid[i, p0 - len(p):] = True
        key = ("prefill", b, p0, g, params.temperature, params.top_k, params.top_p, params.min_new_tokens)
        if key not in ws.inputs:  # static inputs of this shape
            ws.inputs[key] = (torch.empty((b, p0), dtype=torch.long, device=ws.tok.device),
                              torch.empty((b, p0), dtype=torch.bool, device=ws.tok.device))
        s_ids, s_valid = ws.inputs[key]
        s_ids.copy_(ids, non_blocking=True)
        s_valid.copy_(valid, non_blocking=True)
        if not self._replay_or_capture(ws, key, self.prefill_graphs, self._prefill_step, ws, s_ids, s_valid, g,
                                       params, what="the prefill"):
            self.prefill_graphs = False  # the eager run inside did this call's work

    def _prefill_step(self, ws: _Workspace, ids: torch.Tensor, valid: torch.Tensor, g: int,
                      params: SamplingParams) -> None:
        """Device part of `_prefill` (fixed shapes, no host sync: graph-safe)."""
        b, p0 = ids.shape
        dev = ids.device
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(p0, p0, dtype=torch.bool, device=dev).tril()
        allowed = (causal[None] & valid[:, None, :]) | torch.eye(p0, dtype=torch.bool, device=dev)[None]
        # (no torch.tensor(scalar, device=...) here: that is a host-to-device copy, refused during capture)
        mask = torch.zeros(allowed.shape, dtype=ws.mask.dtype, device=dev).masked_fill_(~allowed, float("-inf"))
        ctx = PrefillContext(positions=positions, cos=ws.cos_table[positions][:, :, None],
                             sin=ws.sin_table[positions][:, :, None], mask=mask[:, None], group_size=g)
        h = self.decoder.hidden(ids, ctx, decode=False, ops=self.ops.plain())
        logits = self.decoder.logits(h[:, -1])

        rows_valid = valid[:, None].expand(b, g, p0).reshape(b * g, p0)
        ws.mask.fill_(float("-inf"))
        ws.mask[:, :p0].masked_fill_(rows_valid, 0.0)
        ws.mask[:, p0].fill_(0.0)  # the first decode step's slot (later ones: opened by the step before)
        ws.pos.copy_(rows_valid.sum(-1))
        ws.slot.fill_(p0)
        ws.out_idx.zero_()
        ws.done.zero_()
        ws.out_tok.fill_(self.pad_id)
        ws.out_logp.zero_()
        self._commit(ws, logits[:, None].expand(b, g, logits.shape[-1]).reshape(b * g, -1), params)

    def _commit(self, ws: _Workspace, logits: torch.Tensor, params: SamplingParams) -> None:
        """Draw the next token of every row from logits [N, V] and record it (graph-safe)."""
        banned = None
        if params.min_new_tokens > 0:
            banned = ws.eos_mask[None] & (ws.out_idx < params.min_new_tokens)[:, None]  # [1, V]
        tok, logp = self.ops.sample_tokens(logits, params.temperature, params.top_k, params.top_p, banned)
        tok = torch.where(ws.done, self.pad_id, tok)
        logp = torch.where(ws.done, 0.0, logp)
        ws.out_tok.index_copy_(1, ws.out_idx, tok[:, None])
        ws.out_logp.index_copy_(1, ws.out_idx, logp[:, None])
        ws.done |= ws.eos_mask[tok]
        ws.tok.copy_(tok)
        ws.out_idx.add_(1)

    def _step(self, ws: _Workspace, length: int, params: SamplingParams) -> None:
        """One decode step for all rows at attention length `length` (fixed shapes, graph-safe)."""
        fused_head = self._fused_head(params)
        if not fused_head:  # (the fused sampler opens the next step's slot itself, as the prefill the first)
            ws.mask.index_fill_(1, ws.slot, 0.0)
        cos = sin = None  # the fused kernel gathers from the tables itself
        if not self.fused:
            cos = ws.cos_table.index_select(0, ws.pos)[:, None, None]  # [N, 1, 1, D]
            sin = ws.sin_table.index_select(0, ws.pos)[:, None, None]
        ctx = DecodeContext(positions=ws.pos, cos=cos, sin=sin, slot=ws.slot,
                            mask=ws.mask[:, None, None, :length], length=length,
                            cos_table=ws.cos_table, sin_table=ws.sin_table)
        if fused_head:
            self._fused_head_commit(ws, self.decoder.hidden_fused(ws.tok, ctx, final_norm=False), params)
            return
        if self.fused:
            h = self.decoder.hidden_fused(ws.tok, ctx)
        else:
            h = self.decoder.hidden(ws.tok[:, None], ctx, decode=True, ops=self.ops)
        self._commit(ws, self.decoder.logits(h[:, 0]), params)
        ws.pos.add_(1)
        ws.slot.add_(1)

    def _fused_head(self, params: SamplingParams) -> bool:
        """Whether this call's decode steps end in grpo.engine.fused_sampling (no top-k / top-p there)."""
        return self.fused_sampling and params.top_k == 0 and params.top_p >= 1.0

    def _fused_head_commit(self, ws: _Workspace, x: torch.Tensor, params: SamplingParams) -> None:
        """Final norm, LM head, draw and bookkeeping of a decode step from the residual stream x [N, H]
        (grpo.engine.fused_sampling); then the slot and output column advance together."""
        d, w = self.decoder, self.ops.w
        pf, pi = head_partials(x, w(d.final_norm.weight), _eps(d.final_norm), w(d.lm_head.weight),
                               params.temperature, ws.seed, ws.out_idx, ban=ws.eos_mask,
                               min_new=params.min_new_tokens)
        commit(pf, pi, ws.eos_mask, ws.done, ws.tok, ws.pos, ws.mask, ws.out_tok, ws.out_logp, ws.slot,
               ws.out_idx, self.pad_id)
        ws.counters.add_(1)

    def _uncompiled_on_error(self, fn, *args):
        """Run fn; if the compiled ops fail (no compiler, an inductor bug), retry with plain ops. Safe for
        _step and _commit: a failure comes before their counters move; cache/mask writes are idempotent."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a compiler problem must not stop sampling
            if not self.ops.compiled:
                raise
            warnings.warn(f"torch.compile of the engine ops failed ({type(e).__name__}: {e}); running uncompiled")
            self.ops.disable_compile()
            return fn(*args)

    def _run_step(self, ws: _Workspace, length: int, params: SamplingParams) -> None:
        key = (length, params.temperature, params.top_k, params.top_p, params.min_new_tokens)
        if not self._replay_or_capture(ws, key, self.cuda_graphs, self._step, ws, length, params,
                                       what="the decode step"):
            self.cuda_graphs = False

    def _replay_or_capture(self, ws: _Workspace, key: tuple, graphs: bool, fn, *args, what: str) -> bool:
        """fn(*args) (graph-safe: fixed shapes, static buffers), replayed from the CUDA graph recorded for
        `key` when `graphs`, else run eagerly. False when the capture failed (fn has run eagerly: this
        call's work is done; the caller turns those graphs off)."""
        if not graphs:
            self._uncompiled_on_error(fn, *args)
            return True
        graph = ws.graphs.get(key)
        if graph is not None:
            graph.replay()
            return True
        # first time at this shape: run it eagerly on a side stream (this call's real work; also warms
        # up cuBLAS and compiles the fused ops), then record it; recording does not execute it
        side = graph_stream(self.device)  # one stream for all warm-ups and captures: one cuBLAS workspace
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._uncompiled_on_error(fn, *args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=ws.pool, stream=side):
                fn(*args)
        except RuntimeError as e:  # keep working without graphs rather than fail a training run
            warnings.warn(f"CUDA graph capture of {what} failed ({str(e).splitlines()[0]}); running it without "
                          "graphs")
            return False
        ws.pool = graph.pool()
        ws.graphs[key] = graph
        return True

"""The policy update's forward and backward replayed from CUDA graphs (`model.cuda_graphs`).

`token_logprobs` on the shared-prompt rows layout launches a few thousand kernels per micro-batch (30
compiled layers forward, their recomputation and backward under gradient checkpointing, 32 log-prob head
chunks); on an H100 at std-step the CPU launching them took longer than the GPU running them (0.175 s of
kernels in a ~0.3 s update). `GraphedLogprobs` records that work once per shape in two CUDA graphs and
replays them:

- forward graph: static inputs (`rows_layout(..., multiple=(p, t))`: ids, positions, plan, source
  positions, targets) -> static log-probs [N·T] and entropies [N·T] of every completion position;
- backward graph: a static upstream gradient [N·T] -> `torch.autograd.backward` through that forward,
  which adds into the parameters' `.grad` tensors in place (gradient accumulation over micro-batches
  works as in eager mode).

`_Replay`, an autograd Function, joins them to the eager loss: its forward replays the forward graph,
its backward copies the incoming gradient into the static buffer and replays the backward graph.

Shapes are made static by rounding the prompt width and the completion width up (`multiple`), and by
computing every completion position (padding included, masked afterwards) instead of the real tokens
only; each new (U, G, P, T) is warmed up and captured (about one extra update) on the process's one
graph stream (`grpo.cuda_streams`), up to `max_graphs` shapes, all in one memory pool (a step replays one
shape's pair, so they never hold live memory at the same time). The parameters' `.grad` tensors must stay the same tensors from one replay to
the next: the trainer zeroes them in place (`zero_grad(set_to_none=False)`) while graphs are in use.
With a `scratch` buffer (the trainer passes the engine's idle KV cache, `EngineSampler.scratch`), the
checkpointed layer inputs are kept in it (`checkpoints_in`); the graphs are captured anew whenever that buffer
is not the one they were captured with (the engine re-allocated it: another batch shape, or a call that needed
more cache slots), and the update keeps no reference to a buffer the engine has dropped.
Conditions (`usable`): CUDA, one process (no DDP gradient hooks to replay), the rows layout
(transformers "sdpa" attention, no MoE adapter, whole groups of equal size per micro-batch).
Anything else, or a capture that fails, runs `token_logprobs` eagerly.
"""
from __future__ import annotations

import contextlib
import traceback
import warnings
import weakref

import torch

from grpo.cuda_streams import graph_stream
from grpo.logprobs import PackedBatch, _can_share, _route_layout_masks, head_logprobs, rows_layout
from grpo.memory import is_out_of_memory


def _uncached_autocast():
    """Autocast as it is, but without its weight-cast cache: a cast cached during capture would be a
    tensor of the graph's pool that the next replay does not recompute (PyTorch's CUDA graph notes)."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


class _IntoArena(torch.autograd.Function):
    """Copy a layer's input hidden states into a slice of the scratch arena and hand the slice on in their
    place (gradient: identity). The copy runs inside the Function, so the arena (the engine's KV cache)
    gets no autograd history of its own."""

    @staticmethod
    def forward(ctx, hidden, slot):
        slot.copy_(hidden)
        return slot.detach()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


@contextlib.contextmanager
def checkpoints_in(layers, arena: torch.Tensor | None):
    """Gradient checkpointing whose saved layer inputs live in `arena`, a flat buffer whose contents are
    dead during the update (the rollout engine's KV cache, `EngineSampler.scratch`): each checkpointed layer
    gets its input copied into the next free slice (while slices of its size and dtype are left) and
    checkpoints that copy instead, so the input itself is freed. Non-reentrant checkpointing keeps its
    inputs and recomputes from them in backward: those are now arena slices, written once per forward. At
    std-step the 30 layer inputs were 30 x 37 MiB of the update's peak; the 900 MiB KV cache holds 24 of
    them (`python tools/mem_probe.py`, H100). Layers without checkpointing on are left alone."""
    wrapped = [layer for layer in layers
               if getattr(layer, "gradient_checkpointing", False) and hasattr(layer, "_gradient_checkpointing_func")]
    if arena is None or not wrapped:
        yield
        return
    used = [0]
    originals = [layer.__dict__.get("_gradient_checkpointing_func") for layer in wrapped]

    def into_arena(checkpoint_fn):
        def run(fn, hidden, *args, **kwargs):
            if (torch.is_tensor(hidden) and hidden.dtype == arena.dtype and hidden.device == arena.device
                    and used[0] + hidden.numel() <= arena.numel()):
                # a tensor of its own over the slice (not a view): writes to other slices must not bump its
                # version counter, which checkpointing checks in backward
                slot = torch.empty(0, dtype=arena.dtype, device=arena.device).set_(
                    arena.untyped_storage(), arena.storage_offset() + used[0], hidden.shape)
                hidden = _IntoArena.apply(hidden, slot)
                used[0] += hidden.numel()
            return checkpoint_fn(fn, hidden, *args, **kwargs)
        return run

    for layer in wrapped:
        layer._gradient_checkpointing_func = into_arena(layer._gradient_checkpointing_func)
    try:
        yield
    finally:
        for layer, orig in zip(wrapped, originals):
            if orig is None:
                del layer._gradient_checkpointing_func
            else:
                layer._gradient_checkpointing_func = orig


class _Replay(torch.autograd.Function):
    """forward: replay the forward graph, return its static outputs; backward: replay the backward graph
    (the parameters' gradients are accumulated inside it), nothing to return to the inputs."""

    @staticmethod
    def forward(ctx, anchor, graphs):
        ctx.graphs = graphs
        graphs.fwd.replay()
        ent = graphs.ent.detach()
        ctx.mark_non_differentiable(ent)
        return graphs.logp.detach(), ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_ent):
        g = ctx.graphs
        g.grad_out.copy_(grad_logp)
        g.bwd.replay()
        return None, None


def _buffer_key(t: torch.Tensor | None) -> tuple | None:
    """Where a scratch buffer lives (address, size, dtype): what captured graphs write into."""
    return None if t is None else (t.data_ptr(), t.numel(), t.dtype)


class _Graphs:
    """The captured pair for one shape and its static tensors."""

    def __init__(self, inputs: dict, logp, ent, grad_out, fwd, bwd):
        self.inputs, self.logp, self.ent, self.grad_out, self.fwd, self.bwd = inputs, logp, ent, grad_out, fwd, bwd


class GraphedLogprobs:
    """CUDA-graphed `token_logprobs` (rows layout, all completion positions) with its backward."""

    def __init__(self, model, temperature: float, compile_head: bool, multiple: tuple[int, int] = (32, 64),
                 chunk_tokens: int = 1024, max_graphs: int = 6, warmup: int = 2, scratch=None):
        self.model, self.temperature, self.compile_head = model, temperature, compile_head
        self.scratch = scratch  # () -> flat buffer dead during the update, or None (see checkpoints_in)
        # the scratch buffer the graphs were captured with: its address (`_buffer_key`) and a weak reference,
        # so that a buffer the engine has dropped (it grew its cache) is freed at once, not kept by the update
        self._arena_key: tuple | None = None
        self._arena_ref = None
        self.multiple, self.chunk_tokens, self.max_graphs, self.warmup = multiple, chunk_tokens, max_graphs, warmup
        self.graphs: dict[tuple, _Graphs] = {}
        self.pool = None
        self.disabled = False
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.anchor = torch.zeros((), requires_grad=True, device=self.params[0].device)
        self.grad_ptrs: list[int | None] = []
        _route_layout_masks()  # the plan masks reach _rows_attention through transformers' "sdpa" entry

    @staticmethod
    def usable(model, num_processes: int) -> str | None:
        """Why graphs cannot serve this model (None: they can)."""
        if not torch.cuda.is_available() or not next(model.parameters()).is_cuda:
            return "the model is not on a CUDA device"
        if num_processes != 1:
            return "more than one process (DDP's gradient hooks are not replayed)"
        if not _can_share(model):
            return "the rows layout needs transformers' sdpa attention and no MoE adapter"
        return None

    @property
    def arena(self) -> torch.Tensor | None:
        """The scratch buffer of the current graphs (None: none, or the engine has dropped it)."""
        return None if self._arena_ref is None else self._arena_ref()

    def _sync_arena(self, moved: bool = False) -> None:
        """Before a replay: when the .grad tensors moved or the engine's scratch buffer is not the one the graphs
        were captured with (the engine re-allocated its cache: another batch shape, or a longer request), drop
        the graphs (they would add gradients or write checkpoints into freed memory) and take the current
        buffer. The same address, size and dtype is the same memory: its graphs stay valid."""
        arena = self.scratch() if self.scratch is not None else None
        if moved or _buffer_key(arena) != self._arena_key:
            self.graphs.clear()
            self.pool = None
            self._arena_key = _buffer_key(arena)
            self._arena_ref = None if arena is None else weakref.ref(arena)

    def _forward(self, ids, pos, plan, src_seq, src_pos, targets):
        decoder = self.model.get_decoder()
        with checkpoints_in(getattr(decoder, "layers", []), self.arena):
            # the decoder alone: the final (normed) states, without keeping every layer's output alive
            h = decoder(input_ids=ids, attention_mask=plan, position_ids=pos, use_cache=False).last_hidden_state
        h = h[src_seq, src_pos]
        lm_head = self.model.get_output_embeddings()
        return head_logprobs(h, targets, lm_head, self.temperature, self.chunk_tokens, True, self.compile_head)

    def forget(self) -> None:
        """Drop every captured graph and their memory pool (after an out-of-memory error: the trainer runs
        the update again with smaller micro-batches, captured anew)."""
        self.graphs.clear()
        self.pool = None

    def _grads_moved(self) -> bool:
        return [None if p.grad is None else p.grad.data_ptr() for p in self.params] != self.grad_ptrs

    def _capture(self, inputs: dict) -> _Graphs:
        for p in self.params:  # persistent .grad tensors, allocated outside the graphs' pool
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.grad_ptrs = [p.grad.data_ptr() for p in self.params]
        side = graph_stream(self.params[0].device)  # shared: one cuBLAS workspace for all captures
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _uncached_autocast():  # warm-up: compiles, autotunes; touches no .grad
            for _ in range(self.warmup):
                logp, _ = self._forward(**inputs)
                torch.autograd.grad(logp, self.params, torch.ones_like(logp), allow_unused=True)
                del logp
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        fwd, bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(fwd, pool=self.pool, stream=side), _uncached_autocast():
            logp, ent = self._forward(**inputs)
        self.pool = fwd.pool()
        grad_out = torch.zeros_like(logp)
        with torch.cuda.graph(bwd, pool=self.pool, stream=side):
            torch.autograd.backward(logp, grad_out)
        return _Graphs(inputs, logp.detach(), ent, grad_out, fwd, bwd)

    def __call__(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(log-probs [N, T], entropies [N, T]) on the model's device of `batch`'s completions (`batch` on the
        host or the device), 0 where the mask is 0, through the graphs; None when the rows layout does not
        apply (or graphs were given up): run eagerly then."""
        if self.disabled:
            return None
        dev = self.anchor.device  # `batch` may be on the host: the layout is built there and moved once
        layout = rows_layout(batch, multiple=self.multiple, device=dev)
        if layout is None:
            return None
        n, t_used = batch.completion_ids.shape
        t = layout.plan.shape[2]
        real = batch.completion_mask.to(dev) > 0  # before the replay: a host-to-device copy waits for the stream
        targets = torch.zeros((n, t), dtype=torch.long, device=dev)
        targets[:, :t_used] = batch.completion_ids.to(dev)
        fresh = {"ids": layout.input_ids, "pos": layout.position_ids, "plan": layout.plan,
                 "src_seq": layout.src_seq, "src_pos": layout.src_pos, "targets": targets.flatten()}
        key = (tuple(layout.input_ids.shape), t)
        moved = bool(self.graphs) and self._grads_moved()
        if moved:
            warnings.warn("the parameters' .grad tensors changed since the update's CUDA graphs were captured "
                          "(set to None?); capturing them again")
        self._sync_arena(moved)
        graphs = self.graphs.get(key)
        if graphs is None:
            if len(self.graphs) >= self.max_graphs:
                return None
            try:
                graphs = self.graphs[key] = self._capture(fresh)
            except RuntimeError as e:  # keep training without graphs rather than fail the run
                if is_out_of_memory(e):  # not a reason to give graphs up: the trainer retries smaller
                    self.forget()
                    raise
                where = traceback.extract_tb(e.__traceback__)[-1]
                warnings.warn(f"CUDA graph capture of the update failed at {where.filename}:{where.lineno} "
                              f"({where.line}): {e}; running it eagerly")
                self.disabled = True
                return None
        else:
            for k, v in fresh.items():
                graphs.inputs[k].copy_(v)
        logp, ent = _Replay.apply(self.anchor, graphs)
        logp = logp.view(n, t)[:, :t_used]
        ent = ent.view(n, t)[:, :t_used]
        return torch.where(real, logp, 0.0), torch.where(real, ent, 0.0)

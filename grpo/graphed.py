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
only; each new (U, G, P, T) is warmed up on a side stream and captured (about one extra update), up to
`max_graphs` shapes, all in one memory pool (a step replays one shape's pair, so they never hold live
memory at the same time). The parameters' `.grad` tensors must stay the same tensors from one replay to
the next: the trainer zeroes them in place (`zero_grad(set_to_none=False)`) while graphs are in use.
Conditions (`usable`): CUDA, one process (no DDP gradient hooks to replay), the rows layout
(transformers "sdpa" attention, no MLA/MoE adapters, whole groups of equal size per micro-batch).
Anything else, or a capture that fails, runs `token_logprobs` eagerly.
"""
from __future__ import annotations

import contextlib
import traceback
import warnings

import torch

from grpo.logprobs import PackedBatch, _can_share, _route_layout_masks, head_logprobs, layout_states, rows_layout


def _uncached_autocast():
    """Autocast as it is, but without its weight-cast cache: a cast cached during capture would be a
    tensor of the graph's pool that the next replay does not recompute (PyTorch's CUDA graph notes)."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


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


class _Graphs:
    """The captured pair for one shape and its static tensors."""

    def __init__(self, inputs: dict, logp, ent, grad_out, fwd, bwd):
        self.inputs, self.logp, self.ent, self.grad_out, self.fwd, self.bwd = inputs, logp, ent, grad_out, fwd, bwd


class GraphedLogprobs:
    """CUDA-graphed `token_logprobs` (rows layout, all completion positions) with its backward."""

    def __init__(self, model, temperature: float, compile_head: bool, multiple: tuple[int, int] = (32, 64),
                 chunk_tokens: int = 1024, max_graphs: int = 6, warmup: int = 2):
        self.model, self.temperature, self.compile_head = model, temperature, compile_head
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
            return "the rows layout needs transformers' sdpa attention and no MLA/MoE adapters"
        return None

    def _forward(self, ids, pos, plan, src_seq, src_pos, targets):
        h = layout_states(self.model, ids, pos, plan, src_seq, src_pos)
        lm_head = self.model.get_output_embeddings()
        return head_logprobs(h, targets, lm_head, self.temperature, self.chunk_tokens, True, self.compile_head)

    def _grads_moved(self) -> bool:
        return [None if p.grad is None else p.grad.data_ptr() for p in self.params] != self.grad_ptrs

    def _capture(self, inputs: dict) -> _Graphs:
        for p in self.params:  # persistent .grad tensors, allocated outside the graphs' pool
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.grad_ptrs = [p.grad.data_ptr() for p in self.params]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _uncached_autocast():  # warm-up: compiles, autotunes; touches no .grad
            for _ in range(self.warmup):
                logp, _ = self._forward(**inputs)
                torch.autograd.grad(logp, self.params, torch.ones_like(logp), allow_unused=True)
                del logp
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        fwd, bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(fwd, pool=self.pool), _uncached_autocast():
            logp, ent = self._forward(**inputs)
        self.pool = fwd.pool()
        grad_out = torch.zeros_like(logp)
        with torch.cuda.graph(bwd, pool=self.pool):
            torch.autograd.backward(logp, grad_out)
        return _Graphs(inputs, logp.detach(), ent, grad_out, fwd, bwd)

    def __call__(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(log-probs [N, T], entropies [N, T]) of `batch`'s completions, 0 where the mask is 0, through the
        graphs; None when the rows layout does not apply (or graphs were given up): run eagerly then."""
        if self.disabled:
            return None
        layout = rows_layout(batch, multiple=self.multiple)
        if layout is None:
            return None
        n, t_used = batch.completion_ids.shape
        t = layout.plan.shape[2]
        targets = torch.zeros((n, t), dtype=torch.long, device=batch.completion_ids.device)
        targets[:, :t_used] = batch.completion_ids
        fresh = {"ids": layout.input_ids, "pos": layout.position_ids, "plan": layout.plan,
                 "src_seq": layout.src_seq, "src_pos": layout.src_pos, "targets": targets.flatten()}
        key = (tuple(layout.input_ids.shape), t)
        if self.graphs and self._grads_moved():  # the graphs would add into freed memory: capture anew
            warnings.warn("the parameters' .grad tensors changed since the update's CUDA graphs were captured "
                          "(set to None?); capturing them again")
            self.graphs.clear()
            self.pool = None
        graphs = self.graphs.get(key)
        if graphs is None:
            if len(self.graphs) >= self.max_graphs:
                return None
            try:
                graphs = self.graphs[key] = self._capture(fresh)
            except RuntimeError as e:  # keep training without graphs rather than fail the run
                where = traceback.extract_tb(e.__traceback__)[-1]
                warnings.warn(f"CUDA graph capture of the update failed at {where.filename}:{where.lineno} "
                              f"({where.line}): {e}; running it eagerly")
                self.disabled = True
                return None
        else:
            for k, v in fresh.items():
                graphs.inputs[k].copy_(v)
        logp, ent = _Replay.apply(self.anchor, graphs)
        real = batch.completion_mask > 0
        logp = logp.view(n, t)[:, :t_used]
        ent = ent.view(n, t)[:, :t_used]
        return torch.where(real, logp, 0.0), torch.where(real, ent, 0.0)

"""Helpers shared by the log-prob layout tests (rows, flex, shared, graphed): a weighted backward through
token_logprobs, the gradients it left, and attention layers compiled the way compile_blocks compiles them."""
import copy

import torch
from torch._dynamo.utils import counters

from grpo.logprobs import token_logprobs


def weights(lp: torch.Tensor) -> torch.Tensor:
    """A different weight per position, so a gradient in the wrong place shows."""
    return torch.linspace(0.5, 1.5, lp.numel(), device=lp.device).view_as(lp)


def grads(model) -> torch.Tensor:
    """Every parameter's gradient, flattened into one (copied) vector."""
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def logprobs_and_grads(model, batch, **kw):
    """token_logprobs (temperature 0.7, with entropy) and the gradients of its weighted sum."""
    model.zero_grad(set_to_none=True)
    lp, ent = token_logprobs(model, batch, temperature=0.7, with_entropy=True, **kw)
    (lp * weights(lp)).sum().backward()
    return lp.detach(), ent, grads(model)


def compiled_attention_copy(model):
    """A copy of `model` whose attention layers are compiled as compile_blocks does (dynamic shapes; backend
    aot_eager to stay fast on CPU), with dynamo's caches and counters reset."""
    compiled = copy.deepcopy(model)
    for layer in compiled.get_decoder().layers:
        layer.self_attn.compile(dynamic=True, backend="aot_eager")
    torch._dynamo.reset()
    counters.clear()
    return compiled

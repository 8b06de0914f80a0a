"""The shared-prompt layout through FlexAttention (a BlockMask, attention="flex") gives the dense-mask
form's and the padded layout's log-probs and gradients (fp32, CPU: FlexAttention's eager reference)."""
import pytest
import torch
import torch.nn.attention.flex_attention as flex_module
from torch.nn.attention.flex_attention import create_mask
from torch._dynamo.utils import counters
from transformers import AttentionInterface

from grpo.logprobs import FLEX_BLOCK, _route_layout_masks, pack, shared_layout, token_logprobs
from grpo.testing import tiny_model
from logprob_utils import compiled_attention_copy, logprobs_and_grads


@pytest.fixture
def cpu_flex_backward(monkeypatch):
    """torch 2.13 refuses FlexAttention backward on CPU before running anything (`_validate_device`:
    its compiled CPU kernel is inference-only); the eager reference it runs here has a backward, so the
    tests lift that check."""
    monkeypatch.setattr(flex_module, "_validate_device", lambda query, key, value: None)


def _batch(shift=0):
    """Two prompts, six completions each, ragged (one fully masked): the flex layout is 2 x 256 columns."""
    g = torch.Generator().manual_seed(shift)
    rows = [[5, 6, 7, 8, 9]] * 6 + [[10, 11, 12]] * 6
    comp = torch.randint(13, 40, (12, 60), generator=g)
    lens = (torch.tensor([60, 7, 33, 1, 45, 0, 20, 60, 9, 38, 11, 25]) - shift).clamp(min=0)
    mask = (torch.arange(60)[None] < lens[:, None]).long()
    return pack(rows, comp * mask, mask, pad_id=0)


def test_block_mask_is_the_dense_rule_on_a_padded_width():
    b = _batch()
    dense, flex = shared_layout(b), shared_layout(b, multiple=FLEX_BLOCK)
    u, width = flex.segments.shape
    assert width == 2 * FLEX_BLOCK and dense.segments.shape[1] < width
    assert (flex.segments[:, dense.segments.shape[1]:] == -2).all()
    block = flex.block_mask()
    elementwise = create_mask(block.mask_mod, u, 1, width, width, device="cpu")
    assert torch.equal(elementwise, flex.dense_mask())
    assert torch.equal(flex.dense_mask()[..., :dense.segments.shape[1], :dense.segments.shape[1]], dense.dense_mask())
    assert (block.kv_num_blocks[:, 0, 0] == 1).all()  # the first query tile skips the tile above the diagonal


@pytest.mark.parametrize("grad_ckpt", [False, True])
def test_flex_equals_dense_and_padded_logprobs_entropy_and_grads(tok, cpu_flex_backward, grad_ckpt):
    model = tiny_model(tok)
    if grad_ckpt:  # layers re-run in backward: the BlockMask must reach flex there too
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    b = _batch()
    padded = logprobs_and_grads(model, b, share_prompts=False)
    dense = logprobs_and_grads(model, b, attention="dense")
    flex = logprobs_and_grads(model, b, attention="flex")
    for ref in (dense, padded):
        assert torch.allclose(flex[0], ref[0], atol=1e-5), (flex[0] - ref[0]).abs().max()
        assert torch.allclose(flex[1], ref[1], atol=1e-5)
        assert torch.allclose(flex[2], ref[2], atol=1e-5, rtol=1e-4), (flex[2] - ref[2]).abs().max()
    assert (flex[0][b.completion_mask == 0] == 0).all()


def test_flex_through_compiled_attention_no_recompile(tok, cpu_flex_backward):
    """Attention layers compiled as compile_blocks does, with dynamic shapes (backend aot_eager: inductor's
    CPU FlexAttention kernel is inference-only, and with dynamic shapes its C++ does not build on torch
    2.13): same maths, and a second micro-batch of the same widths, other segments, reuses the graphs."""
    eager = tiny_model(tok)
    compiled = compiled_attention_copy(eager)
    for shift in (0, 1):
        b = _batch(shift)
        ref = logprobs_and_grads(eager, b, attention="dense")
        with torch._dynamo.config.patch(error_on_recompile=shift > 0):
            out = logprobs_and_grads(compiled, b, attention="flex")
        assert torch.allclose(out[0], ref[0], atol=1e-5)
        assert torch.allclose(out[2], ref[2], atol=1e-5, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] >= 1  # the attention did go through dynamo


def test_auto_never_picks_flex_and_tensor_masks_keep_sdpa(tok):
    model = tiny_model(tok)
    b = _batch()
    lp, ent, g = logprobs_and_grads(model, b)  # "auto": rows (whole groups) or dense, never flex
    _route_layout_masks()
    routed = AttentionInterface()["sdpa"]
    _route_layout_masks()
    assert AttentionInterface()["sdpa"] is routed  # wrapped once
    for kw in ({}, {"share_prompts": False}):  # a tensor mask goes to the wrapped sdpa
        lp2, _, g2 = logprobs_and_grads(model, b, **kw)
        assert torch.allclose(lp, lp2, atol=1e-5) and torch.allclose(g, g2, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError):
        token_logprobs(model, b, attention="flash")

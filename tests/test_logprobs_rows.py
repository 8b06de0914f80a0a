"""The regular shared-prompt layout (RowsLayout, attention="rows"/"auto") gives the padded layout's and the
dense-mask layout's log-probs, entropy and gradients (fp32, CPU), and is refused where it does not apply."""
import pytest
import torch
from torch._dynamo.utils import counters

from grpo.logprobs import pack, rows_layout
from grpo.testing import tiny_model
from logprob_utils import compiled_attention_copy, logprobs_and_grads


def _batch(shift=0, rows_per_prompt=(6, 6)):
    """Two prompts of different lengths (left padding inside the layout), ragged completions, one empty."""
    g = torch.Generator().manual_seed(shift)
    a, b = rows_per_prompt
    rows = [[5, 6, 7, 8, 9]] * a + [[10, 11, 12]] * b
    n = a + b
    comp = torch.randint(13, 40, (n, 60), generator=g)
    lens = (torch.tensor([60, 7, 33, 1, 45, 0, 20, 60, 9, 38, 11, 25, 30, 3])[:n] - shift).clamp(min=0)
    mask = (torch.arange(60)[None] < lens[:, None]).long()
    return pack(rows, comp * mask, mask, pad_id=0)


def test_rows_layout_shape_plan_and_sources():
    b = _batch()
    lay = rows_layout(b)
    u, g, t, pw = 2, 6, 60, 5
    assert lay.input_ids.shape == (u, pw + g * t) and lay.plan.shape == (u * g, 1, t, pw + t)
    assert lay.plan.dtype == torch.uint8
    # prompt 1 ([10, 11, 12]) is left-padded by 2: its rows never see those keys; own keys causally
    assert (lay.plan[g:, 0, :, :2] == 0).all() and (lay.plan[g:, 0, :, 2:pw] == 1).all()
    assert torch.equal(lay.plan[0, 0, :, pw:], torch.ones(t, t, dtype=torch.uint8).tril())
    assert lay.position_ids[1, pw:pw + 3].tolist() == [3, 4, 5]  # after a 3-token prompt
    # the first completion token of every row is predicted by its prompt's last column
    assert lay.src_pos[0] == pw - 1 and lay.src_seq[0] == 0
    assert lay.src_seq.numel() == int(b.completion_mask.sum())


@pytest.mark.parametrize("grad_ckpt", [False, True])
def test_rows_equals_padded_and_dense_logprobs_entropy_and_grads(tok, grad_ckpt):
    model = tiny_model(tok)
    if grad_ckpt:  # layers re-run in backward: the plan must reach the attention there too
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    b = _batch()
    assert rows_layout(b) is not None
    padded = logprobs_and_grads(model, b, share_prompts=False)
    dense = logprobs_and_grads(model, b, attention="dense")
    for kw in ({"attention": "rows"},):
        rows = logprobs_and_grads(model, b, **kw)
        for ref in (dense, padded):
            assert torch.allclose(rows[0], ref[0], atol=1e-5), (rows[0] - ref[0]).abs().max()
            assert torch.allclose(rows[1], ref[1], atol=1e-5)
            assert torch.allclose(rows[2], ref[2], atol=1e-5, rtol=1e-4), (rows[2] - ref[2]).abs().max()
        assert (rows[0][b.completion_mask == 0] == 0).all()


def test_rows_not_used_for_unequal_groups_and_auto_falls_back(tok):
    b = _batch(rows_per_prompt=(6, 8))  # 6 and 8 rows per prompt: not a regular layout
    assert rows_layout(b) is None
    model = tiny_model(tok)
    padded = logprobs_and_grads(model, b, share_prompts=False)
    for kw in ({}, {"attention": "rows"}):  # auto (CPU): the dense shared layout; rows: the padded layout
        out = logprobs_and_grads(model, b, **kw)
        assert torch.allclose(out[0], padded[0], atol=1e-5)
        assert torch.allclose(out[2], padded[2], atol=1e-5, rtol=1e-4)
    unique = pack([[5, 6], [7, 8]], torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long), pad_id=0)
    assert rows_layout(unique) is None  # no prompt repeats


def test_rows_through_compiled_attention_no_recompile(tok):
    """Attention layers compiled as compile_blocks does (dynamic shapes; backend aot_eager to stay fast on
    CPU): same maths, and a second micro-batch with other completion lengths (other T) reuses the graphs."""
    eager = tiny_model(tok)
    compiled = compiled_attention_copy(eager)
    for shift in (0, 3, 5):
        b = _batch(shift)
        ref = logprobs_and_grads(eager, b, attention="dense")
        with torch._dynamo.config.patch(error_on_recompile=shift > 3):
            out = logprobs_and_grads(compiled, b, attention="rows")
        assert torch.allclose(out[0], ref[0], atol=1e-5)
        assert torch.allclose(out[2], ref[2], atol=1e-5, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] >= 1


@pytest.mark.parametrize("gqa", [True, False])
def test_rows_attention_matches_per_query_softmax(gqa):
    """`_rows_attention` with grouped K/V given to SDPA as they are (gqa) or with repeated heads, against
    attention written out query by query (fp32): completions see their prompt's real tokens and their own
    earlier tokens, prompt tokens see earlier real prompt tokens, a padding query sees only itself."""
    from grpo.logprobs import _rows_attention

    torch.manual_seed(0)
    u, g, pw, t, hq, hkv, d = 2, 3, 5, 4, 6, 2, 8
    width, rep = pw + g * t, hq // hkv
    q = torch.randn(u, width, hq, d).transpose(1, 2).requires_grad_()
    k = torch.randn(u, width, hkv, d).transpose(1, 2).requires_grad_()
    v = torch.randn(u, width, hkv, d).transpose(1, 2).requires_grad_()
    valid = torch.ones(u, pw, dtype=torch.bool)
    valid[0, :2] = False  # left padding in the first prompt
    own = torch.ones(t, t, dtype=torch.uint8).tril().expand(u * g, 1, t, t)
    seen = valid.to(torch.uint8)[:, None].expand(u, g, pw).reshape(u * g, 1, 1, pw).expand(-1, -1, t, -1)
    out = _rows_attention(q, k, v, torch.cat([seen, own], dim=-1), 0.3, gqa=gqa)  # [U, L, Hq, d]
    ref = torch.zeros_like(out)
    for b in range(u):
        for col in range(width):
            if col < pw:
                keys = [c for c in range(col + 1) if valid[b, c]] if valid[b, col] else [col]
            else:
                j = (col - pw) // t
                first = pw + j * t
                keys = [c for c in range(pw) if valid[b, c]] + list(range(first, col + 1))
            for h in range(hq):
                s = (k[b, h // rep, keys] @ q[b, h, col]) * 0.3
                ref[b, col, h] = torch.softmax(s, dim=0) @ v[b, h // rep, keys]
    assert torch.allclose(out, ref, atol=1e-5)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_mla_model_uses_the_rows_layout(tok):
    """An MLA-converted model (grpo.adapters.mla) takes the shared-prompt layouts (its attention gets q, k, v
    and the mask like any other): same log-probs, entropies and gradients as the padded layout; a MoE model
    keeps the padded layout (routing replay is aligned with its rows)."""
    from grpo.adapters import apply_adapters
    from grpo.logprobs import _can_share

    mla = apply_adapters(tiny_model(tok), {"mla": {"rank": 8, "rope_dims": 4}})
    mla.config._attn_implementation = "sdpa"
    assert _can_share(mla)
    moe = apply_adapters(tiny_model(tok), {"moe": {"num_experts": 4, "top_k": 2, "num_shared": 1}})
    moe.config._attn_implementation = "sdpa"
    assert not _can_share(moe)
    mla.train()
    b = _batch()
    padded = logprobs_and_grads(mla, b, share_prompts=False)
    rows = logprobs_and_grads(mla, b, attention="rows")
    assert torch.allclose(rows[0], padded[0], atol=1e-5), (rows[0] - padded[0]).abs().max()
    assert torch.allclose(rows[1], padded[1], atol=1e-5)
    assert torch.allclose(rows[2], padded[2], atol=1e-5, rtol=1e-4), (rows[2] - padded[2]).abs().max()

"""Shared-prompt packing in token_logprobs gives the padded layout's log-probs and gradients."""
import torch

from grpo.logprobs import pack, shared_layout, token_logprobs
from grpo.testing import tiny_model
from logprob_utils import grads, weights


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]  # two prompts of different lengths, 3 completions each
    rows = [prompts[0]] * 3 + [prompts[1]] * 3
    comp = torch.randint(13, 40, (6, 7), generator=g)
    lens = torch.tensor([7, 3, 5, 1, 6, 0])  # ragged, and one row fully masked (a masked truncation)
    mask = (torch.arange(7)[None] < lens[:, None]).long()
    return pack(rows, comp * mask, mask, pad_id=0)


def test_layout_packs_each_prompt_once_with_block_mask():
    b = _batch()
    lay = shared_layout(b)
    assert lay is not None and lay.input_ids.shape[0] == 2
    assert lay.input_ids.shape[1] == 5 + 7 + 3 + 5  # longest: prompt 0 + its completions' real tokens
    att = lay.dense_mask()[0, 0]
    # the second completion of prompt 0 starts at column 12: it sees the prompt and itself, not completion 1
    assert att[12, :5].all() and not att[12, 5:12].any() and att[12, 12]
    assert int(b.completion_mask.sum()) == lay.src_seq.numel()


def test_no_repeated_prompt_keeps_padded_layout():
    b = pack([[1, 2], [3, 4, 5]], torch.tensor([[7, 8], [9, 9]]), torch.ones(2, 2, dtype=torch.long), 0)
    assert shared_layout(b) is None


def test_shared_equals_padded_logprobs_entropy_and_grads(tok):
    b = _batch()
    model = tiny_model(tok)
    assert model.config._attn_implementation == "sdpa"
    lp_a, ent_a = token_logprobs(model, b, temperature=0.7, with_entropy=True, share_prompts=False)
    (lp_a * weights(lp_a)).sum().backward()
    g_a = grads(model)
    model.zero_grad()
    lp_b, ent_b = token_logprobs(model, b, temperature=0.7, with_entropy=True, share_prompts=True)
    (lp_b * weights(lp_b)).sum().backward()
    g_b = grads(model)
    assert torch.allclose(lp_a, lp_b, atol=1e-5), (lp_a - lp_b).abs().max()
    assert torch.allclose(ent_a, ent_b, atol=1e-5)
    assert torch.allclose(g_a, g_b, atol=1e-5, rtol=1e-4), (g_a - g_b).abs().max()
    assert (lp_b[b.completion_mask == 0] == 0).all()

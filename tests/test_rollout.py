"""The HF sampling backend and the RolloutBatch it returns."""
import torch

from data import load_examples
from grpo.rollout import HFSampler, SamplingParams, encode_prompts, finish_rows
from grpo.testing import tiny_model


def test_finish_rows_cuts_at_first_eos():
    seqs = torch.tensor([[5, 6, 2, 7], [5, 5, 5, 5], [2, 9, 9, 9]])
    ids, mask, trunc = finish_rows(seqs, {2}, pad_id=0, max_new_tokens=4)
    assert ids.tolist() == [[5, 6, 2, 0], [5, 5, 5, 5], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert trunc.tolist() == [False, True, False]


def test_hf_sampler_groups_and_shapes(tok):
    torch.manual_seed(0)
    model = tiny_model(tok)
    ex = load_examples("arithmetic", n=3, seed=0)
    _, ids = encode_prompts(tok, ex, "plain")
    rb = HFSampler(model, tok, batch_size=4).generate(ids, 4, SamplingParams(max_new_tokens=8))
    assert rb.completion_ids.shape[0] == 12 and rb.completion_ids.shape[1] <= 8
    assert rb.group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert rb.prompt_ids[4] == ids[1]
    assert len(rb.texts) == 12
    # padding only after the end of each completion
    for row, m in zip(rb.completion_ids, rb.completion_mask):
        n = int(m.sum())
        assert torch.all(m[:n] == 1) and torch.all(row[n:] == tok.pad_token_id)


def test_greedy_is_deterministic(tok):
    model = tiny_model(tok)
    _, ids = encode_prompts(tok, load_examples("arithmetic", n=2, seed=1), "r1_zero")
    s = HFSampler(model, tok)
    a = s.generate(ids, 1, SamplingParams(max_new_tokens=6, temperature=0.0))
    b = s.generate(ids, 1, SamplingParams(max_new_tokens=6, temperature=0.0))
    assert torch.equal(a.completion_ids, b.completion_ids)

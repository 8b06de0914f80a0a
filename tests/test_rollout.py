"""The HF sampling backend and the RolloutBatch it returns."""
import torch

from grpo.data import load_examples
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


def test_real_token_rows_prefix_and_general_masks():
    from grpo.rollout import real_token_rows

    ids = torch.tensor([[5, 6, 7], [8, 9, 1], [4, 3, 2]])
    prefix = torch.tensor([[1.0, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert real_token_rows(ids, prefix) == [[5, 6], [8, 9, 1], []]
    holes = torch.tensor([[1.0, 0, 1], [0, 1, 1], [1, 0, 0]])  # not prefixes: row by row
    assert real_token_rows(ids, holes) == [[5, 7], [9, 1], [4]]


def _random_rows(tokenizer, n=24, width=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(tokenizer), (n, width), generator=g)
    ids[::5, 3] = tokenizer.eos_token_id  # special tokens inside rows: dropped by both decoders
    mask = (torch.arange(width) < torch.randint(0, width + 1, (n, 1), generator=g)).float()
    return ids, mask


def test_lazy_texts_rust_decoder_matches_batch_decode():
    """The bundled SmolLM2 tokenizer (byte-level BPE, multi-byte characters split across tokens in random
    rows) takes the background Rust path, and it gives batch_decode's texts exactly."""
    from grpo.models import load_tokenizer
    from grpo.rollout import LazyTexts, real_token_rows, rust_batch_decode

    tk = load_tokenizer("smollm2-135m-instruct")
    assert rust_batch_decode(tk) is not None
    ids, mask = _random_rows(tk, n=64, width=96)
    texts = LazyTexts(tk, ids, mask)
    assert texts._future is not None  # decoding started at construction
    assert list(texts) == tk.batch_decode(real_token_rows(ids, mask), skip_special_tokens=True)
    assert len(texts) == 64 and texts.token_rows == real_token_rows(ids, mask)


def test_lazy_texts_falls_back_where_transformers_decodes_differently(tok):
    """A tokenizer whose space clean-up would run (not BPE) or a subclass with its own _decode is decoded
    by its batch_decode on first use."""
    from grpo.rollout import LazyTexts, rust_batch_decode

    assert rust_batch_decode(tok) is not None  # the char tokenizer: no clean-up set
    tok2 = type(tok)(tokenizer_object=tok.backend_tokenizer, pad_token="<pad>", eos_token="<|im_end|>",
                     clean_up_tokenization_spaces=True)
    assert rust_batch_decode(tok2) is None  # WordLevel model: transformers would clean up spaces

    class Shouting(type(tok)):
        def _decode(self, token_ids, **kw):
            return super()._decode(token_ids, **kw).upper()

    loud = Shouting(tokenizer_object=tok.backend_tokenizer, pad_token="<pad>", eos_token="<|im_end|>")
    assert rust_batch_decode(loud) is None
    ids, mask = _random_rows(tok)
    texts = LazyTexts(loud, ids, mask)
    assert texts._future is None and list(texts) == loud.batch_decode(texts.token_rows, skip_special_tokens=True)
    assert any(t != t.lower() for t in texts)

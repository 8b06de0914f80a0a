"""The rollout engine on an MLA-converted model: absorbed latent cache (latent + rotary key only)."""
import copy

import pytest
import torch

from adapter_utils import tiny_model
from grpo.adapters import apply_adapters, cache_bytes_per_token, mla_generate
from grpo.engine import EngineSampler
from grpo.engine.attention import GQAAttention, MLALatentAttention
from grpo.rollout import HFSampler, SamplingParams

PAD, EOS = 0, 2
HEAD_DIM, NUM_KV, LAYERS, RANK, ROPE = 16, 2, 2, 12, 4
PROMPTS = [[1, 5, 9, 14, 3], [1, 7], [1, 20, 21, 22, 23, 24, 25, 26, 27], [1, 11, 12]]


class TinyTokenizer:
    pad_token_id, eos_token_id = PAD, EOS

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(t) for t in r if not (skip_special_tokens and t in (PAD, EOS))) for r in rows]


def _models(kind="llama"):
    dense = tiny_model(kind)
    mla = apply_adapters(copy.deepcopy(dense), {"mla": {"rank": RANK, "rope_dims": ROPE, "rope_selection": "norm"}})
    return dense, mla.train()


def test_engine_uses_latent_cache_and_reports_bytes():
    dense, mla = _models()
    eng = EngineSampler(mla, TinyTokenizer(), max_batch=8, bucket=8)
    assert all(isinstance(a, MLALatentAttention) for a in eng.decoder.attn)
    dense_eng = EngineSampler(dense, TinyTokenizer(), max_batch=8, bucket=8)
    assert all(isinstance(a, GQAAttention) for a in dense_eng.decoder.attn)
    # fp32 engine: 4 bytes per element; MLA holds rank + n_kv * rope_dims per layer, GQA 2 * n_kv * d
    assert eng.kv_bytes_per_token == LAYERS * (RANK + NUM_KV * ROPE) * 4 == cache_bytes_per_token(mla, torch.float32)
    assert dense_eng.kv_bytes_per_token == LAYERS * 2 * NUM_KV * HEAD_DIM * 4 == cache_bytes_per_token(dense, torch.float32)
    assert eng.kv_bytes_per_token < dense_eng.kv_bytes_per_token
    bf16 = EngineSampler(mla, TinyTokenizer(), max_batch=8, bucket=8, dtype=torch.bfloat16)
    assert bf16.kv_bytes_per_token == LAYERS * (RANK + NUM_KV * ROPE) * 2
    # the live cache holds exactly those tensors, and the report is the same while it is allocated
    eng.generate(PROMPTS, 2, SamplingParams(max_new_tokens=4, temperature=0.0))
    ws = eng._ws
    a = eng.decoder.attn[0]
    assert [tuple(t.shape) for t in a.cache_tensors()] == [(ws.rows, ws.slots, RANK), (ws.rows, ws.slots, NUM_KV, ROPE)]
    assert eng.kv_bytes_per_token == LAYERS * (RANK + NUM_KV * ROPE) * 4


@pytest.mark.parametrize("kind", ["llama", "qwen2"])  # qwen2: q/k/v biases
def test_greedy_matches_hf_generate_and_mla_generate(kind):
    _, mla = _models(kind)
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    ref = HFSampler(mla, TinyTokenizer()).generate(PROMPTS, 2, params)
    eng = EngineSampler(mla, TinyTokenizer(), max_batch=8, bucket=8)
    eng.generate(PROMPTS[:2], 2, params)  # other shapes first: the cache is rebuilt
    out = eng.generate(PROMPTS, 2, params)
    assert mla.training  # train mode restored
    assert torch.equal(out.completion_ids, ref.completion_ids)
    assert torch.equal(out.completion_mask, ref.completion_mask)
    assert out.texts == ref.texts
    assert out.completion_mask.sum(1).float().mean() > 4  # not a trivial all-EOS run
    # and token for token the adapter's own latent-cache greedy loop (left-padded batch)
    width = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in PROMPTS])
    lat = mla_generate(mla.eval(), ids, (ids != PAD).long(), max_new_tokens=16, eos_token_id=EOS)[:, width:]
    for i in range(len(PROMPTS)):
        n = int(out.completion_mask[2 * i].sum())
        assert torch.equal(out.completion_ids[2 * i, :n], lat[i, :n])


def test_sampled_logprobs_match_forward_pass():
    _, mla = _models()
    torch.manual_seed(0)
    out = EngineSampler(mla, TinyTokenizer(), max_batch=16, bucket=8).generate(
        PROMPTS, 3, SamplingParams(max_new_tokens=20, temperature=0.7))
    ref = torch.zeros(out.completion_ids.shape)
    with torch.no_grad():
        for i, prompt in enumerate(out.prompt_ids):
            n = int(out.completion_mask[i].sum())
            seq = torch.tensor(prompt + out.completion_ids[i, :n].tolist())[None]
            logits = mla(seq).logits[0, len(prompt) - 1: len(prompt) - 1 + n].float() / 0.7
            ref[i, :n] = logits.log_softmax(-1).gather(-1, out.completion_ids[i, :n, None])[:, 0]
    assert (out.logprobs[out.completion_mask == 0] == 0).all()
    assert torch.allclose(out.logprobs, ref, atol=1e-4), (out.logprobs - ref).abs().max()
    assert not torch.equal(out.completion_ids[0], out.completion_ids[1])


def test_moe_still_refused():
    dense = tiny_model()
    moe = apply_adapters(copy.deepcopy(dense), {"mla": {"rank": RANK, "rope_dims": ROPE}, "moe": {}})
    with pytest.raises(NotImplementedError, match="MoE"):
        EngineSampler(moe, TinyTokenizer())

"""The rollout engine on an MLA-converted model: absorbed latent cache (latent + rotary key only)."""
import copy

import pytest
import torch

from adapter_utils import tiny_model
from grpo.adapters import apply_adapters, cache_bytes_per_token, mla_generate, moe_layers, routing_replay
from grpo.engine import EngineSampler
from grpo.engine.attention import GQAAttention, MLALatentAttention
from grpo.logprobs import pack, token_logprobs
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


def test_reference_mla_attention_is_the_modules_latent_attention():
    """grpo.engine.mla_decode's PyTorch maths (the CPU path and the kernel tests' oracle) on the engine's cache
    layout [c | k_rope per KV head] and absorbed queries [q̃ | q_rope] = the module's `latent_attention`."""
    from grpo.engine.mla_decode import reference_mla_attention

    _, mla = _models()
    m = mla.model.layers[0].self_attn
    torch.manual_seed(0)
    n, length, r, rd = 3, 11, RANK, ROPE
    q = torch.randn(n, 1, m.num_heads, m.head_dim)
    cache = torch.randn(n, length, m.cache_width)
    mask = torch.zeros(n, length)
    mask[1, :4] = float("-inf")
    lat, krope = cache[..., :r], cache[..., r:].unflatten(-1, (NUM_KV, rd))
    with torch.no_grad():
        ref = m.latent_attention(q, lat, krope, bias=mask[:, None, None, None])[:, 0].flatten(1, 2)  # [N, H, r]
        w_uk = m.k_up.weight.view(NUM_KV, -1, r)
        q_lat = torch.einsum("nkge,ker->nkgr", q[:, 0, :, rd:].unflatten(1, (NUM_KV, -1)), w_uk).flatten(1, 2)
        out = reference_mla_attention(torch.cat((q_lat, q[:, 0, :, :rd]), -1), cache, mask, m.scaling, NUM_KV, rd)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


MOE = {"num_experts": 8, "top_k": 2, "num_shared": 1}


def _moe_model(adapters):
    model = apply_adapters(tiny_model(), adapters)
    torch.manual_seed(1)
    for m in moe_layers(model):  # a decisive router and a nonzero bias: routes change token to token
        torch.nn.init.normal_(m.router.weight, std=0.5)
        m.e_score_correction_bias.normal_(0, 0.05)
    return model.train()


@pytest.mark.parametrize("adapters", [{"moe": MOE}, {"mla": {"rank": RANK, "rope_dims": ROPE}, "moe": MOE}],
                         ids=["moe", "mla+moe"])
def test_moe_engine_matches_hf_generate_and_records_the_same_routes(adapters):
    """The engine serves DeepSeekMoE layers (routing, bias, shared + routed experts) and records the experts it
    chose, for routing replay, as the HF sampler's recording does: same rows, same tokens, same routes."""
    model = _moe_model(adapters)
    params = SamplingParams(max_new_tokens=10, temperature=0.0, min_new_tokens=10)  # full length: same steps
    with routing_replay(model, "record") as rec:
        ref = HFSampler(model, TinyTokenizer()).generate(PROMPTS, 2, params)
    eng = EngineSampler(model, TinyTokenizer(), max_batch=6, bucket=8)  # 8 rows: two chunks, the last padded
    assert eng.decoder.reads_weights_only
    with routing_replay(model, "record") as got:
        out = eng.generate(PROMPTS, 2, params)
    assert torch.equal(out.completion_ids, ref.completion_ids)
    hf, ours = rec[0], got[0]
    assert ours.num_rows == hf.num_rows == 8
    assert torch.equal(out.routes.routes, ours.routes)  # the batch carries them too
    lengths = torch.tensor([len(p) + 9 for p in PROMPTS for _ in range(2)])  # prompt + every token fed
    assert torch.equal(ours.lengths.cpu(), lengths) and torch.equal(hf.lengths.cpu(), lengths)
    for row, n in enumerate(lengths.tolist()):  # (past a row's length the entries are unused padding)
        assert torch.equal(ours.routes[row, :n], hf.routes[row, :n]), row
    assert len(torch.unique(ours.routes[:, :, 0])) > 4  # the routes vary (not one expert pair everywhere)
    # outside a recording block the engine keeps nothing
    assert eng.generate(PROMPTS, 2, params).routes is None


def test_moe_engine_rollout_replays_in_the_update():
    """Routing replay of an engine rollout: a forward pass replaying the recorded experts gives the sampled
    tokens' log-probs as the engine computed them (the replay routes each token to the experts it had)."""
    model = _moe_model({"moe": MOE})
    torch.manual_seed(0)
    eng = EngineSampler(model, TinyTokenizer(), max_batch=16, bucket=8)
    with routing_replay(model, "record") as rec:
        out = eng.generate(PROMPTS, 3, SamplingParams(max_new_tokens=12, temperature=0.7))
    with torch.no_grad():  # move the bias after sampling: the model's own routing now differs
        for m in moe_layers(model):
            m.e_score_correction_bias.add_(torch.randn_like(m.e_score_correction_bias))
    batch = pack(out.prompt_ids, out.completion_ids, out.completion_mask, PAD)
    with torch.no_grad():
        with routing_replay(model, "replay", rec[0]):
            replayed, _ = token_logprobs(model.eval(), batch, temperature=0.7)
        own, _ = token_logprobs(model, batch, temperature=0.7)
    mask = out.completion_mask.bool()
    assert torch.allclose(replayed[mask], out.logprobs[mask], atol=1e-4)
    assert not torch.allclose(own[mask], out.logprobs[mask], atol=1e-3)  # the moved bias reroutes tokens

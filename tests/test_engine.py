"""The rollout engine against Hugging Face generate and a full forward pass, on tiny random models."""
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from grpo.engine import EngineSampler
from grpo.rollout import HFSampler, SamplingParams

EOS, PAD, VOCAB = 2, 0, 96


class TinyTokenizer:
    pad_token_id, eos_token_id = PAD, EOS

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(t) for t in r if not (skip_special_tokens and t in (PAD, EOS))) for r in rows]


def tiny_model(kind="llama", seed=0, context=256):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=context,
                  bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=True)
    cfg = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[kind](**common)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # larger weights than the default init: peaked, varied distributions
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    return model.train()


PROMPTS = [[1, 5, 9, 14, 3], [1, 7], [1, 20, 21, 22, 23, 24, 25, 26, 27], [1, 11, 12]]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_greedy_matches_hf_generate(kind):
    model = tiny_model(kind)
    params = SamplingParams(max_new_tokens=20, temperature=0.0)
    ref = HFSampler(model, TinyTokenizer()).generate(PROMPTS, 2, params)
    eng = EngineSampler(model, TinyTokenizer(), max_batch=8, bucket=8, keep_cache=(kind != "qwen2"))
    eng.generate(PROMPTS[:2], 2, params)  # a first call with other shapes: the cache is reused or rebuilt
    out = eng.generate(PROMPTS, 2, params)
    assert model.training  # train mode restored
    assert (eng._ws is None) == (kind == "qwen2")
    assert torch.equal(out.completion_mask, ref.completion_mask)
    assert torch.equal(out.completion_ids, ref.completion_ids)
    assert torch.equal(out.truncated, ref.truncated)
    assert out.texts == ref.texts
    assert out.prompt_ids == ref.prompt_ids and torch.equal(out.group, ref.group)


def full_forward_logprobs(model, rows, ids, mask, temperature):
    """Per-token log-probs of each completion by one forward pass on prompt + completion."""
    out = torch.zeros(ids.shape)
    with torch.no_grad():
        for i, prompt in enumerate(rows):
            n = int(mask[i].sum())
            seq = torch.tensor(prompt + ids[i, :n].tolist())[None]
            logits = model(seq).logits[0, len(prompt) - 1: len(prompt) - 1 + n].float() / temperature
            out[i, :n] = logits.log_softmax(-1).gather(-1, ids[i, :n, None])[:, 0]
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_sampled_logprobs_match_forward_pass(kind):
    model = tiny_model(kind, seed=1)
    torch.manual_seed(0)
    params = SamplingParams(max_new_tokens=24, temperature=0.7)
    out = EngineSampler(model, TinyTokenizer(), max_batch=16, bucket=16).generate(PROMPTS, 3, params)
    ref = full_forward_logprobs(model, out.prompt_ids, out.completion_ids, out.completion_mask, 0.7)
    assert out.logprobs.shape == out.completion_ids.shape
    assert (out.logprobs[out.completion_mask == 0] == 0).all()
    assert torch.allclose(out.logprobs, ref, atol=1e-4), (out.logprobs - ref).abs().max()
    # samples of one group differ: the G rows are not copies of one draw
    assert not torch.equal(out.completion_ids[0], out.completion_ids[1])


def test_min_new_tokens_and_eos_padding():
    model = tiny_model(seed=2)
    with torch.no_grad():  # make EOS the likely token so rows end early once allowed
        model.lm_head.weight[EOS] = model.lm_head.weight.mean(0) * 0 + 0.5
    eng = EngineSampler(model, TinyTokenizer(), max_batch=16, bucket=8)
    out = eng.generate(PROMPTS, 2, SamplingParams(max_new_tokens=40, temperature=1.0, min_new_tokens=5))
    lengths = out.completion_mask.sum(1)
    assert (lengths >= 5).all()
    ended = ~out.truncated
    assert ended.any()
    for i in torch.nonzero(ended)[:, 0]:
        n = int(lengths[i])
        assert out.completion_ids[i, n - 1] == EOS and (out.completion_ids[i, :n - 1] != EOS).all()
        assert (out.completion_ids[i, n:] == PAD).all()
    fixed = eng.generate(PROMPTS, 2, SamplingParams(max_new_tokens=12, temperature=1.0, min_new_tokens=12))
    assert fixed.completion_mask.shape == (8, 12) and bool(fixed.completion_mask.all())


def test_chunks_top_k_and_top_p():
    model = tiny_model(seed=3)
    eng = EngineSampler(model, TinyTokenizer(), max_batch=4, bucket=8)  # 5 prompts * G=2 in chunks of 4 rows
    prompts = PROMPTS + [[1, 4, 4]]
    out = eng.generate(prompts, 2, SamplingParams(max_new_tokens=10, temperature=1.0, top_k=1))
    greedy = eng.generate(prompts, 2, SamplingParams(max_new_tokens=10, temperature=0.0))
    assert out.completion_ids.shape[0] == 10
    assert torch.equal(out.completion_ids, greedy.completion_ids)  # top-k 1 is greedy
    nucleus = eng.generate(prompts, 2, SamplingParams(max_new_tokens=10, temperature=1.0, top_p=1e-6))
    assert torch.equal(nucleus.completion_ids, greedy.completion_ids)  # a tiny nucleus keeps the argmax
    # logprobs are those of the unfiltered distribution, so below 0 for a non-certain argmax
    assert (nucleus.logprobs[nucleus.completion_mask.bool()] < 0).all()


def test_weights_are_shared_with_training():
    model = tiny_model(seed=4)
    eng = EngineSampler(model, TinyTokenizer(), max_batch=8, bucket=8)
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    before = eng.generate(PROMPTS, 1, params).completion_ids
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    model(torch.tensor([PROMPTS[0]]), labels=torch.tensor([PROMPTS[0]])).loss.backward()
    opt.step()  # in-place update; the engine must see it without a sync step
    after = eng.generate(PROMPTS, 1, params)
    ref = HFSampler(model, TinyTokenizer()).generate(PROMPTS, 1, params)
    assert torch.equal(after.completion_ids, ref.completion_ids)
    assert not torch.equal(after.completion_ids, before)


def test_engine_skips_the_train_eval_switch_only_when_no_module_forward_runs(monkeypatch):
    model = tiny_model(seed=6)  # in training mode, with attention dropout that eval mode would turn off
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    switches = []
    monkeypatch.setattr(model, "train", lambda mode=True: switches.append(mode) or model)
    eng = EngineSampler(model, TinyTokenizer(), max_batch=8, bucket=8)
    assert eng.decoder.reads_weights_only
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    out = eng.generate(PROMPTS, 1, params)
    assert switches == [] and model.training
    monkeypatch.undo()
    ref = HFSampler(model, TinyTokenizer()).generate(PROMPTS, 1, params)  # generate in eval mode: no dropout
    assert torch.equal(out.completion_ids, ref.completion_ids)
    eng.decoder.reads_weights_only = False  # as for an ungated MLP: modules run, eval mode
    monkeypatch.setattr(model, "train", lambda mode=True: switches.append(mode) or model)
    eng.generate(PROMPTS, 1, params)
    assert switches == [False, True]


def test_low_precision_shadow_follows_updates():
    model = tiny_model(seed=5)
    eng = EngineSampler(model, TinyTokenizer(), max_batch=8, bucket=8, dtype=torch.bfloat16)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    eng.generate(PROMPTS, 1, params)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)  # in-place change of the fp32 master weights
    out = eng.generate(PROMPTS, 1, params)
    ref = HFSampler(model.to(torch.bfloat16), TinyTokenizer()).generate(PROMPTS, 1, params)
    agree = (out.completion_ids == ref.completion_ids).float().mean()
    assert agree > 0.8, agree  # bf16 paths may split on near-ties, not wholesale


def test_token_logprobs_chunked_matches_full_logits_and_grads():
    from grpo.logprobs import pack, token_logprobs

    model = tiny_model(seed=6)
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (4, 7))
    mask = torch.ones(4, 7)
    mask[1, 4:] = 0
    mask[3, 1:] = 0
    batch = pack(PROMPTS, ids, mask, PAD)
    logp, ent = token_logprobs(model, batch, temperature=0.7, chunk_tokens=3, with_entropy=True)
    logp.sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref_lp = torch.zeros(4, 7)
    ref_ent = torch.zeros(4, 7)
    for i, prompt in enumerate(PROMPTS):  # one unpadded sequence at a time, full logits
        n = int(mask[i].sum())
        seq = torch.tensor(prompt + ids[i, :n].tolist())[None]
        lp = (model(seq).logits[0, len(prompt) - 1:-1].float() / 0.7).log_softmax(-1)
        ref_lp[i, :n] = lp.gather(-1, ids[i, :n, None])[:, 0]
        ref_ent[i, :n] = -(lp.exp() * lp).sum(-1).detach()
    ref_lp.sum().backward()
    assert logp.dtype == torch.float32 and (logp[mask == 0] == 0).all()
    assert torch.allclose(logp, ref_lp, atol=1e-5)
    assert torch.allclose(ent, ref_ent, atol=1e-4)
    for n, p in model.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-5), n


def test_kv_cache_is_one_scratch_buffer_and_scribbles_on_it_change_nothing():
    """GQA caches are slices of one flat buffer (`scratch`), which the policy update may overwrite between
    calls (grpo.graphed keeps gradient checkpoints there): filling it with finite junk changes no token."""
    model = tiny_model()
    eng = EngineSampler(model, TinyTokenizer(), max_batch=8)
    assert eng.scratch() is None
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    first = eng.generate(PROMPTS, 2, params).completion_ids
    buf = eng.scratch()
    assert buf is not None and buf.dim() == 1
    caches = [t for a in eng.decoder.attn for t in (a.k_cache, a.v_cache)]
    assert buf.numel() == sum(t.numel() for t in caches)
    assert all(t.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr() for t in caches)
    buf.uniform_(-1e4, 1e4)
    assert torch.equal(eng.generate(PROMPTS, 2, params).completion_ids, first)
    eng.release()
    assert eng.scratch() is None


def _lengths_near_buckets(context: int) -> list[int]:
    """Prompt lengths on both sides of the prefill bucket (8) and decode bucket multiples, and up to the context."""
    near = {m + d for m in (8, 16, 24, 32, 64, 128) for d in (-1, 0, 1)}
    return sorted(n for n in near | {1, 2, 3, 5, 11, 37, 71, context - 1} if 0 < n < context)


def _random_shapes_against_hf(device: str, **engine_kw) -> list:
    """Random prompt lengths (just below, on and above multiples of 8 and 64, and prompts that exactly fill
    the context with max_new_tokens) x max_new_tokens x group sizes x batch sizes, on one engine per batch size
    whose later calls need more cache than its earlier ones (it grows) and less (it reuses). Every call must
    run; greedy rows must equal HF generate. Returns the engines."""
    context = 160
    model = tiny_model(seed=7, context=context).to(device)
    hf = HFSampler(model, TinyTokenizer())
    rng = random.Random(0)
    lengths = _lengths_near_buckets(context)
    calls, engines = 0, []
    for max_batch in (3, 8, 20):
        eng = EngineSampler(model, TinyTokenizer(), max_batch=max_batch, bucket=16, **engine_kw)
        assert eng.max_seq_len == context   # the cap: the model's context
        grew = 0
        for i in range(7):
            t = rng.choice([1, 2, 5, 8, 13, 33])
            fits = [n for n in lengths if n + t <= context]
            # every third call fills the context exactly (rounding its width up would pass the context's end)
            longest = context - t if i % 3 == 2 else rng.choice(fits)
            prompts = [[rng.randrange(3, VOCAB) for _ in range(n)]
                       for n in [longest] + [rng.randint(1, longest) for _ in range(rng.randint(0, 4))]]
            rng.shuffle(prompts)
            g = rng.choice([1, 2, 3])
            slots = None if eng.scratch() is None else eng._ws.slots
            greedy = SamplingParams(max_new_tokens=t, temperature=0.0)
            out = eng.generate(prompts, g, greedy)
            grew += slots is not None and eng._ws.slots > slots
            assert eng._ws.slots <= context and eng._ws.cos_table.shape[0] == eng._ws.slots
            ref = hf.generate(prompts, g, greedy)
            assert torch.equal(out.completion_ids, ref.completion_ids), (max_batch, longest, t, g)
            assert torch.equal(out.completion_mask, ref.completion_mask)
            assert torch.equal(out.truncated, ref.truncated)
            sampled = eng.generate(prompts, g, SamplingParams(max_new_tokens=t, temperature=1.0, top_k=5))
            assert sampled.completion_ids.shape[0] == len(prompts) * g
            assert sampled.completion_mask.shape[1] <= t
            calls += 2
        assert grew, "no call needed more cache than an earlier one"
        engines.append(eng)
    assert calls == 42
    return engines


def test_cache_sizing_never_fails_and_greedy_matches_hf_over_random_shapes():
    """Property test of the engine's cache sizing (`_random_shapes_against_hf`) on the CPU: the prefill width is
    rounded as on the GPU, so these are the GPU's shapes without its graphs."""
    _random_shapes_against_hf("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cache_sizing_with_cuda_graphs():
    """The same on a GPU with the decode and prefill steps replayed from CUDA graphs (fp32, uncompiled ops, so
    greedy equality with HF is exact): growing drops the old graphs, and no capture fails."""
    for eng in _random_shapes_against_hf("cuda", dtype=torch.float32, compile=False):
        assert eng.cuda_graphs and eng.prefill_graphs and eng._ws.graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused Triton decode step needs a CUDA device")
def test_grown_engine_equals_a_fresh_one_on_the_fused_bf16_path():
    """bf16, fused decode kernels and fused sampling, CUDA graphs, compiled ops (the GPU defaults): an engine that
    grew its cache (new rotary tables, new graphs) gives the tokens an engine built for that call gives, up to
    prompt + max_new_tokens = the context length."""
    from transformers import LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=300,
                      bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).cuda()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = EOS, PAD
    rng = random.Random(1)
    small = [[rng.randrange(3, VOCAB) for _ in range(n)] for n in (9, 17, 30)]
    big = [[rng.randrange(3, VOCAB) for _ in range(n)] for n in (250, 101, 263)]   # 263 + 37 = 300
    params = SamplingParams(max_new_tokens=37, temperature=0.0)
    grown = EngineSampler(model, TinyTokenizer(), max_batch=24)
    assert grown.fused and grown.fused_sampling and grown.dtype == torch.bfloat16
    grown.generate(small, 8, params)
    before = grown._ws.slots
    out = grown.generate(big, 8, params)
    assert grown._ws.slots > before
    fresh = EngineSampler(model, TinyTokenizer(), max_batch=24).generate(big, 8, params)
    assert torch.equal(out.completion_ids, fresh.completion_ids)
    sampled = grown.generate(big, 8, SamplingParams(max_new_tokens=37, temperature=1.0))
    assert sampled.completion_ids.shape[0] == 24


def test_prompt_past_the_context_is_one_clear_error_in_both_samplers():
    model = tiny_model(seed=8, context=64)
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    prompts = [[5] * 55]   # 55 + 10 > 64
    for sampler in (EngineSampler(model, TinyTokenizer(), max_batch=4), HFSampler(model, TinyTokenizer())):
        with pytest.raises(ValueError, match="55 tokens \\+ max_new_tokens 10 = 65 > 64"):
            sampler.generate(prompts, 2, params)
    assert EngineSampler(model, TinyTokenizer(), max_batch=4).generate([[5] * 54], 2, params).completion_ids.shape[0] == 2

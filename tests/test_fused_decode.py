"""The engine's fused decode kernels (grpo.engine.fused_decode) against the unfused maths.

They run on CPU through Triton's interpreter (TRITON_INTERPRET=1 must be set before triton is imported,
hence subprocesses). Skipped without triton (CPU-only torch builds); `python -m grpo.bench --engine-only`
checks the compiled kernels on a GPU in bf16 (greedy tokens and log-probs against HF).
"""
import pytest
from interp_utils import ENGINE_SETUP, run_interpreted

pytest.importorskip("triton")

KERNELS = r"""
import torch
from grpo.engine.fused_decode import (norm_gate_up, norm_qkv_rope, reference_norm_gate_up,
                                      reference_norm_qkv_rope)
torch.manual_seed(0)
worst = {}
for dtype in (torch.float32, torch.float16):  # the interpreter mishandles bf16 dot; the GPU check covers it
    n, hidden, hq, hkv, d, slots, inter = 37, 96, 6, 2, 32, 20, 80   # 37 rows: a partial row block
    x = torch.randn(n, hidden, dtype=dtype)
    g = (1 + 0.1 * torch.randn(hidden)).to(dtype)
    wq, wk, wv = [(0.1 * torch.randn(h * d, hidden)).to(dtype) for h in (hq, hkv, hkv)]
    biases = [(0.1 * torch.randn(h * d)).to(dtype) for h in (hq, hkv, hkv)]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(slots).float(), inv)
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    pos = torch.randint(0, slots, (n,))
    slot = torch.tensor([5])
    for b in ([None] * 3, biases):
        caches = [torch.randn(n + 3, hkv, slots, d, dtype=dtype) for _ in range(2)]
        ref_caches = [c.clone() for c in caches]
        q = norm_qkv_rope(x, g, 1e-5, wq, wk, wv, *b, cos, sin, pos, slot, *caches)
        ref = reference_norm_qkv_rope(x, g, 1e-5, wq, wk, wv, *b, cos, sin, pos, slot, *ref_caches)
        assert q.shape == (n, hq, d) and q.dtype == dtype
        err = max(float((q.float() - ref.float()).abs().max()),
                  *(float((c.float() - r.float()).abs().max()) for c, r in zip(caches, ref_caches)))
        worst[str(dtype)] = max(worst.get(str(dtype), 0.0), err)
        # only slot 5 of rows [0, n) was written
        untouched = torch.ones(n + 3, slots, dtype=torch.bool)
        untouched[:n, 5] = False
        assert all(torch.equal(c.transpose(1, 2)[untouched], r.transpose(1, 2)[untouched])
                   for c, r in zip(caches, ref_caches))
    wg, wu = [(0.1 * torch.randn(inter, hidden)).to(dtype) for _ in range(2)]
    act = norm_gate_up(x, g, 1e-5, wg, wu)
    err = float((act.float() - reference_norm_gate_up(x, g, 1e-5, wg, wu).float()).abs().max())
    worst[str(dtype)] = max(worst[str(dtype)], err)
assert worst["torch.float32"] < 1e-5, worst
assert worst["torch.float16"] < 8e-3, worst
print("ok", worst)
"""

ENGINE = ENGINE_SETUP + r"""
for cls in (LlamaConfig, Qwen2Config):  # Qwen2: biases on q/k/v
    model = tiny_model(cls)
    fused = EngineSampler(model, Tok(), max_batch=6, bucket=8, fused=True, fused_sampling=False)  # same RNG
    plain = EngineSampler(model, Tok(), max_batch=6, bucket=8, fused=False)
    assert fused.fused and not plain.fused
    for temperature in (0.0, 1.0):
        params = SamplingParams(max_new_tokens=12, temperature=temperature)
        torch.manual_seed(1)
        a = fused.generate(prompts, 2, params)
        torch.manual_seed(1)
        b = plain.generate(prompts, 2, params)
        assert torch.equal(a.completion_ids, b.completion_ids), (a.completion_ids, b.completion_ids)
        assert torch.equal(a.completion_mask, b.completion_mask)
        err = float((a.logprobs - b.logprobs).abs().max())
        assert err < 1e-4, err
print("ok")
"""


def test_fused_kernels_match_unfused_maths_under_interpreter():
    assert run_interpreted(KERNELS).startswith("ok")


def test_engine_fused_decode_matches_unfused_engine():
    """Same tokens (greedy and sampled with one seed) and log-probs through the fused decode step, for
    Llama and Qwen2 (q/k/v biases); the prefill and the first token are shared code."""
    assert run_interpreted(ENGINE).startswith("ok")


def test_fused_refused_for_models_it_cannot_serve():
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from grpo.engine import EngineSampler

    cfg = Qwen3Config(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)

    class Tok:
        pad_token_id, eos_token_id = 0, 2

    assert not EngineSampler(model, Tok()).fused  # auto: CPU, and q/k norms
    with pytest.raises(ValueError, match="fused=True"):
        EngineSampler(model, Tok(), fused=True)  # Qwen3's q/k norms are not in the kernel

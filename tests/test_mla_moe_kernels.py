"""The MLA and MoE decode kernels of the engine (grpo.engine.mla_decode, grpo.engine.moe_decode) against the
PyTorch maths, and the engine's fused decode step on MLA / MoE models against the unfused engine and
`mla_generate`.

They run on CPU through Triton's interpreter (TRITON_INTERPRET=1 must be set before triton is imported,
hence subprocesses). Skipped without triton (CPU-only torch builds); bf16 on a GPU is checked by
`python -m grpo.bench --mla-moe` (greedy tokens of the fused engine against the unfused one).
"""
import os
import subprocess
import sys

import pytest
from interp_utils import ENGINE_SETUP, run_interpreted

TESTS = f"TESTS_DIR = {os.path.dirname(os.path.abspath(__file__))!r}\n"  # adapter_utils' tiny models

pytest.importorskip("triton")

ATTENTION = r"""
import torch
from grpo.engine.mla_decode import reference_mla_attention, triton_mla_attention
torch.manual_seed(0)
worst = {}
for dtype in (torch.float32, torch.float16):
    for (r, h, n_kv, rd, length, splits, block_n) in ((64, 9, 3, 8, 100, 1, 32), (16, 12, 4, 16, 37, 3, 16),
                                                       (24, 16, 1, 64, 70, 2, 16), (32, 4, 2, 0, 50, 1, 16)):
        n, slots = 3, 128
        q = torch.randn(n, h, r + rd, dtype=dtype)
        cache = torch.randn(n + 2, slots, r + n_kv * rd, dtype=dtype)
        mask = torch.full((n, slots), float("-inf"), dtype=dtype)
        for i in range(n):
            mask[i, 5 * i: length] = 0.0
        mask[2, 0:20] = float("-inf")
        ref = reference_mla_attention(q.float(), cache[:n, :length].float(), mask[:, :length].float(), 0.2, n_kv, rd)
        out = triton_mla_attention(q, cache[:n, :length], mask[:, :length], 0.2, n_kv, rd, splits=splits, block_n=block_n)
        assert out.dtype == dtype and out.shape == (n, h, r)
        e = float((out.float() - ref).abs().max())
        worst[str(dtype)] = max(worst.get(str(dtype), 0.0), e)
assert worst["torch.float32"] < 1e-5, worst
assert worst["torch.float16"] < 2e-3, worst
print("ok", worst)
"""

PROJECTION = r"""
import sys, torch
sys.path.insert(0, TESTS_DIR)
from adapter_utils import tiny_model
from grpo.adapters import apply_adapters
from grpo.engine.mla_decode import norm_mla_proj, reference_norm_mla_proj
torch.manual_seed(0)
worst = {}
for kind in ("llama", "qwen2"):
    model = apply_adapters(tiny_model(kind), {"mla": {"rank": 12, "rope_dims": 4, "rope_selection": "norm"}})
    layer = model.model.layers[1]
    m, norm = layer.self_attn, layer.input_layernorm
    aw = m.absorbed_weights()
    n, slots = 5, 40
    x = torch.randn(n, 64)
    pos = torch.randint(0, slots, (n,))
    cos, sin = model.model.rotary_emb(x, torch.arange(slots)[None])
    cos, sin = cos[0], sin[0]
    slot = torch.tensor([7])
    # the module's own maths (HF norm, _project, W_uk absorption) as the oracle
    with torch.no_grad():
        h = norm(x)[:, None]
        q, c, kr = m._project(h, (cos[pos][:, None], sin[pos][:, None]))
        rd, r = m.rope_dims, m.rank
        w_uk = m.k_up.weight.view(m.num_kv, -1, r)
        q_lat = torch.einsum("nkge,ker->nkgr", q[:, 0, :, rd:].unflatten(1, (m.num_kv, -1)), w_uk).flatten(1, 2)
        q_mod = torch.cat((q_lat, q[:, 0, :, :rd]), -1)
    for dtype in (torch.float32, torch.float16):
        wd = {k: None if v is None else v.to(dtype) for k, v in aw.items()}
        cache = torch.randn(n + 2, slots, m.cache_width, dtype=dtype)
        ref_cache = cache.clone()
        args = (x.to(dtype), norm.weight.detach().to(dtype), norm.variance_epsilon, wd["proj"], wd["proj_bias"], m.rope_pairs,
                cos.to(dtype), sin.to(dtype), pos, slot)
        out = norm_mla_proj(*args, cache, m.num_heads, r, rd)
        ref = reference_norm_mla_proj(*args, ref_cache, m.num_heads, r, rd)
        e = max(float((out.float() - ref.float()).abs().max()), float((cache.float() - ref_cache.float()).abs().max()))
        untouched = torch.ones(n + 2, slots, dtype=torch.bool); untouched[:n, 7] = False
        assert torch.equal(cache[untouched], ref_cache[untouched])
        worst[str(dtype)] = max(worst.get(str(dtype), 0), e)
        if dtype == torch.float32:  # the reference is the module's maths, absorbed
            e2 = max(float((ref - q_mod).abs().max()), float((ref_cache[:n, 7, :r] - c[:, 0]).abs().max()),
                     float((ref_cache[:n, 7, r:] - kr[:, 0].flatten(1)).abs().max()))
            assert e2 < 1e-4, e2
assert worst["torch.float32"] < 1e-5 and worst["torch.float16"] < 2e-3, worst
print("ok", worst)
"""

MOE_KERNELS = r"""
import sys, torch
sys.path.insert(0, TESTS_DIR)
from adapter_utils import tiny_model
from grpo.adapters import apply_adapters, moe_layers
from grpo.adapters.moe import route, gate_weights
from grpo.engine.moe_decode import norm_route, norm_experts
torch.manual_seed(0)
worst = {}
for moe_cfg in ({"num_experts": 8, "top_k": 2, "num_shared": 1}, {"num_experts": 4, "top_k": 3, "num_shared": 0}):
    model = apply_adapters(tiny_model(intermediate=96), {"moe": moe_cfg})
    layer = model.model.layers[0]
    m, norm = layer.mlp, layer.post_attention_layernorm
    with torch.no_grad():
        torch.nn.init.normal_(m.router.weight, std=0.5)
        m.e_score_correction_bias.normal_(0, 0.05)
    n, slots, k = 37, 12, moe_cfg["top_k"]
    x = torch.randn(n, 64)
    with torch.no_grad():
        h = norm(x)
        scores, idx = route(h, m.router.weight, m.e_score_correction_bias, k)
        g_ref = gate_weights(scores, idx, k)
        y_ref = m.experts(h, g_ref)
    for dtype in (torch.float32, torch.float16):
        routes = torch.full((n + 3, slots, 2, k), -1, dtype=torch.int16)
        view = routes[:, :, 1]
        xd = x.to(dtype)
        gates = norm_route(xd, norm.weight.detach().to(dtype), norm.variance_epsilon, m.router.weight.detach(),
                           m.e_score_correction_bias, k, view[:n], torch.tensor([4]))
        sel = routes[:n, 4, 1].long()
        if dtype == torch.float32:
            assert torch.equal(sel, idx), (sel, idx)        # same experts, same order (no ties here)
            assert float((gates - g_ref).abs().max()) < 1e-5
        else:
            assert (sel.sort(1).values == idx.sort(1).values).all(1).float().mean() > 0.9  # near-ties may flip
        assert (routes[:, :, 0] == -1).all() and (routes[:n, 4, 1] >= 0).all()
        untouched = torch.ones(n + 3, slots, dtype=torch.bool); untouched[:n, 4] = False
        assert (routes[:, :, 1][untouched] == -1).all()
        w = lambda p: p.detach().to(dtype)
        shared = m.shared_dim > 0
        act = norm_experts(xd, w(norm.weight), norm.variance_epsilon, w(m.gate_proj.weight), w(m.up_proj.weight),
                           w(m.shared_gate_proj.weight) if shared else None, w(m.shared_up_proj.weight) if shared else None,
                           g_ref)
        r = m.gate_proj.weight.shape[0]
        y = act[:, :r].float() @ m.down_proj.weight.detach().t()
        if shared:
            y = y + act[:, r:].float() @ m.shared_down_proj.weight.detach().t()
        e = float((y - y_ref).abs().max() / y_ref.abs().max())
        worst[str(dtype)] = max(worst.get(str(dtype), 0), e)
assert worst["torch.float32"] < 1e-5 and worst["torch.float16"] < 5e-3, worst
print("ok", worst)
"""

COMPILE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from grpo.engine import mla_decode as md, moe_decode as mo

def build(fn, consts, warps, stages, **ptrs):
    def kind(n):
        if n in consts:
            return "constexpr"
        if n.endswith("_ptr"):
            return ptrs.get(n, "*bf16")
        return "fp32" if n in ("eps", "scale") else "i32"
    src = ASTSource(fn=fn, signature={n: kind(n) for n in fn.arg_names}, constexprs=consts)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    assert kernel.asm["cubin"]

f32 = dict(part_ptr="*fp32", ml_ptr="*fp32")
for splits, rd in ((1, 8), (5, 8), (1, 0)):  # SmolLM2 MLA shapes, both split modes, with and without RoPE
    build(md._mla_attn_kernel, dict(H=9, G=3, R=64, RD=rd, SPLITS=splits, BLOCK_H=16, R_P=64, RP=32, BLOCK_N=64),
          4, 2, **f32)
build(md._mla_attn_kernel, dict(H=16, G=16, R=512, RD=64, SPLITS=2, BLOCK_H=16, R_P=512, RP=64, BLOCK_N=32), 8, 2, **f32)
build(md._combine_kernel, dict(H=9, R=64, SPLITS=5, S_P=8, R_P=64), 1, 1, **f32)
for bias in (False, True):
    build(md._norm_mla_proj_kernel, dict(HIDDEN=576, H=9, G=3, R=64, RD=8, HAS_BIAS=bias, BLOCK_M=16, BLOCK_N=64,
                                         BLOCK_K=32, M_P=16), 4, 4, pairs_ptr="*i64", pos_ptr="*i64", slot_ptr="*i64")
build(mo._norm_route_kernel, dict(HIDDEN=576, E=8, K=2, E_P=16, BLOCK_M=16, BLOCK_K=64), 4, 3, wr_ptr="*fp32",
      bias_ptr="*fp32", gates_ptr="*fp32", routes_ptr="*i16", slot_ptr="*i64")
for shared in (176, 0):
    build(mo._norm_experts_kernel, dict(HIDDEN=576, E=8, DE=170, SHARED=shared, BLOCK_M=64, BLOCK_N=32, BLOCK_K=32),
          4, 4, gates_ptr="*fp32")
print("ok")
"""

ENGINE = ENGINE_SETUP + r"""
from grpo.adapters import apply_adapters, mla_generate, moe_layers, routing_replay
MLA = {"mla": {"rank": 16, "rope_dims": 8, "rope_selection": "norm"}}
for cls in (Qwen2Config,):  # Qwen2: q/k/v biases (absorbed into the projection and o bias)
    model = apply_adapters(tiny_model(cls), MLA)
    fused = EngineSampler(model, Tok(), max_batch=6, bucket=8, fused=True)
    assert fused.fused and fused.fused_sampling
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    out = fused.generate(prompts, 2, params)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    lat = mla_generate(model.eval(), ids, (ids != 0).long(), max_new_tokens=8, eos_token_id=2)[:, width:]
    for i in range(len(prompts)):
        n = int(out.completion_mask[2 * i].sum())
        assert torch.equal(out.completion_ids[2 * i, :n], lat[i, :n]), (out.completion_ids, lat)
    assert out.completion_mask.sum() > 10  # not a trivial all-EOS run
model = apply_adapters(tiny_model(LlamaConfig), {**MLA, "moe": {"num_experts": 8, "top_k": 2, "num_shared": 1}})
torch.manual_seed(1)
for m in moe_layers(model):
    torch.nn.init.normal_(m.router.weight, std=0.5)
    m.e_score_correction_bias.normal_(0, 0.05)
fused = EngineSampler(model, Tok(), max_batch=6, bucket=8, fused=True, fused_sampling=False)  # same RNG
plain = EngineSampler(model, Tok(), max_batch=6, bucket=8, fused=False)
assert fused.fused and not plain.fused
for temperature in (0.0, 1.0):
    params = SamplingParams(max_new_tokens=8, temperature=temperature)
    outs = []
    for eng in (fused, plain):
        torch.manual_seed(1)
        with routing_replay(model, "record") as rec:
            out = eng.generate(prompts, 2, params)
        outs.append((out, rec[0]))
    (a, ra), (b, rb) = outs
    assert torch.equal(a.completion_ids, b.completion_ids), (a.completion_ids, b.completion_ids)
    assert float((a.logprobs - b.logprobs).abs().max()) < 1e-4
    assert torch.equal(ra.lengths, rb.lengths)
    for row, n in enumerate(ra.lengths.tolist()):
        assert torch.equal(ra.routes[row, :n], rb.routes[row, :n]), row
print("ok")
"""


def test_mla_attention_kernel_matches_pytorch_maths():
    """All heads of a row over its latent + rotary-key cache: ranks 16-64, 4-16 heads, 1-4 KV groups,
    rotary dims 0-64, lengths not multiples of the block, masked left padding, a fully masked split."""
    assert run_interpreted(ATTENTION).startswith("ok")


def test_mla_projection_kernel_matches_the_modules_absorbed_maths():
    """norm_mla_proj on `absorbed_weights` gives the module's own q̃ = W_uk^T q_nope, rotated q_rope, c and
    rotated k_rope (its `_project` after the HF RMSNorm), and writes only this step's cache slot."""
    assert run_interpreted(TESTS + PROJECTION).startswith("ok")


def test_moe_kernels_match_the_adapters_routing_and_experts():
    """norm_route chooses the adapter's experts (same order, fp32) and gates, writes only its route slot;
    norm_experts + the down GEMMs give DeepSeekMoE.experts (8 experts top-2 + shared; 4 top-3, no shared)."""
    assert run_interpreted(TESTS + MOE_KERNELS).startswith("ok")


def test_kernels_compile_for_an_h200():
    """The MLA / MoE kernels compile to sm_90 cubins (Triton's own compiler and ptxas, no GPU needed): the GPU
    backend's type and shape rules, which the interpreter does not apply, hold at the engine's configurations."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600)
    if res.returncode and "ptxas" in res.stderr and "not found" in res.stderr:
        pytest.skip("no ptxas in this triton install")
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]


def test_engine_fused_mla_and_moe_decode():
    """Fused MLA decode (Qwen2: biases absorbed) = mla_generate's greedy tokens; fused MLA + MoE = the
    unfused engine (greedy and sampled with one seed): tokens, log-probs and the recorded routes."""
    assert run_interpreted(ENGINE).startswith("ok")

"""One compiled SmolLM2-135M decoder layer, forward + backward on the update's rows layout, per attention variant.

    python tools/rows_attention_bench.py [--variants hld,lhd,gqa,hld_gqa]

The std-step update (grpo.logprobs.RowsLayout: 16 prompts of P = 56 slots, each followed by its 8 completions of
T = 256 tokens) spends more kernel time in inductor's copy/RoPE kernels around the attention than in its GEMMs
(`tools/step_trace.py`). This times one layer (bf16, `layer.compile(dynamic=True)` as grpo.models.compile_blocks)
with grpo.logprobs._rows_attention replaced by each variant, checks its output and input gradient against the
first variant, and prints the largest kernels of each variant:
  hld      the function before 861e5b9: gathers on [U, H, L, d] views, K/V heads repeat_interleave'd
  lhd      grpo.logprobs._rows_attention with repeated heads (gqa=False): the gathers on [U, L, H, d] views
  gqa      grpo.logprobs._rows_attention with SDPA's enable_gqa (gqa=True; its default on Hopper and CPU)
  hld_gqa  hld with enable_gqa instead of repeated heads

H100, 2026-11-24 (kernel time of one forward + backward; the variants then carried other names): hld 3.583 ms,
lhd 3.540, gqa 3.297, hld_gqa 3.418.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import grpo.logprobs as lp  # noqa: E402


def rows_attention_hld(query, key, value, plan, scale, gqa: bool = False):
    """grpo.logprobs._rows_attention as it was before 861e5b9: gathers on [U, H, L, d] views, K/V heads
    repeat_interleave'd (or, with `gqa`, given to SDPA as they are)."""
    rows, _, t, pt = plan.shape
    pw = pt - t
    u, hq, _, d = query.shape
    hkv = key.shape[1]
    g = rows // u
    allowed = plan.bool()
    gqa = gqa and hkv != hq
    extra = {"enable_gqa": True} if gqa else {}

    def heads(x):  # [.., Hkv, L, d] -> [.., Hq, L, d]
        return x if gqa or hkv == hq else x.repeat_interleave(hq // hkv, dim=-3)

    out_p = F.scaled_dot_product_attention(query[:, :, :pw], heads(key[:, :, :pw]), heads(value[:, :, :pw]),
                                           attn_mask=lp.rows_prompt_mask(allowed, g), scale=scale, **extra)

    def per_row(x, h):  # [U, h, P + G·T, d] -> [U·G, h, T, d]
        return x[:, :, pw:].reshape(u, h, g, t, d).transpose(1, 2).reshape(rows, h, t, d)

    def with_prompt(x):  # [U, Hkv, P + G·T, d] -> [U·G, Hkv, P + T, d]
        shared = x[:, None, :, :pw].expand(u, g, hkv, pw, d).reshape(rows, hkv, pw, d)
        return torch.cat([shared, per_row(x, hkv)], dim=2)

    out_c = F.scaled_dot_product_attention(per_row(query, hq), heads(with_prompt(key)), heads(with_prompt(value)),
                                           attn_mask=allowed, scale=scale, **extra)
    out_c = out_c.reshape(u, g, hq, t, d).transpose(1, 2).reshape(u, hq, g * t, d)
    return torch.cat([out_p, out_c], dim=2).transpose(1, 2).contiguous()


LIBRARY = lp._rows_attention  # main() swaps the module's function per variant; the variants call this one
VARIANTS = {"hld": rows_attention_hld, "hld_gqa": lambda *a: rows_attention_hld(*a, gqa=True),
            "lhd": lambda *a: LIBRARY(*a, gqa=False), "gqa": lambda *a: LIBRARY(*a, gqa=True)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default="hld,lhd,gqa,hld_gqa")
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0)
    cfg._attn_implementation = "sdpa"
    dev, dt = "cuda", torch.bfloat16
    u, g, pw, t = 16, 8, 56, 256
    width = pw + g * t
    valid = torch.ones(u, pw, dtype=torch.bool, device=dev)
    valid[::3, :9] = False  # some left padding
    own = torch.ones(t, t, dtype=torch.uint8, device=dev).tril().expand(u * g, 1, t, t)
    vv = valid.to(torch.uint8)[:, None].expand(u, g, pw).reshape(u * g, 1, 1, pw).expand(-1, -1, t, -1)
    plan = torch.cat([vv, own], dim=-1)
    pos = torch.cat([(valid.long().cumsum(1) - 1).clamp(min=0), valid.sum(1, keepdim=True) + torch.arange(
        t, device=dev).repeat(g)[None]], dim=1)
    rot = LlamaRotaryEmbedding(cfg).to(dev)
    x0 = torch.randn(u, width, 576, device=dev, dtype=dt)
    cos, sin = rot(x0, pos)
    gout = torch.randn_like(x0)
    lp._route_layout_masks()
    ref = None
    for name in args.variants.split(","):
        torch._dynamo.reset()
        lp._rows_attention = VARIANTS[name]
        torch.manual_seed(1)
        layer = LlamaDecoderLayer(cfg, 0).to(dev, dt)
        layer.compile(dynamic=True)
        x = x0.clone().requires_grad_(True)

        def step():
            out = layer(x, attention_mask=plan, position_ids=pos, position_embeddings=(cos, sin))
            out = out[0] if isinstance(out, tuple) else out
            out.backward(gout)
            return out

        try:
            for _ in range(3):
                x.grad = None
                out = step()
        except Exception as e:  # noqa: BLE001 - a variant the backend cannot run
            print(f"{name}: failed {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        torch.cuda.synchronize()
        res = (out.detach().float(), x.grad.float())
        if ref is None:
            ref = res
        err = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(res, ref)]
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(args.iters):
            x.grad = None
            step()
        e.record()
        torch.cuda.synchronize()
        ms = s.elapsed_time(e) / args.iters
        print(f"{name}: {ms:.3f} ms per layer fwd+bwd; max rel. diff vs first variant: out {err[0]:.2e}, "
              f"grad {err[1]:.2e}", flush=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            x.grad = None
            step()
            torch.cuda.synchronize()
        ev = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)
        total = sum(e.self_device_time_total for e in ev)
        print(f"  kernels {total / 1e3:.3f} ms; largest: " + "; ".join(
            f"{e.key[:60]} {e.self_device_time_total / 1e3:.3f}" for e in ev[:8]), flush=True)


if __name__ == "__main__":
    main()

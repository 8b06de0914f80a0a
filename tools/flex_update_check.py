"""Shared-prompt update forward on a GPU: FlexAttention BlockMask vs the dense-mask SDPA form.

    python tools/flex_update_check.py            # std-step shapes; no network, no data sets

A Llama with SmolLM2-135M's shapes (30 layers, 9 query / 3 KV heads, head_dim 64; random bf16 weights),
16 prompts of 100-140 tokens (left-padded) x 8 completions of 256 tokens, one 128-row micro-batch as in
the std-step update (train mode, gradient checkpointing unless --no-grad-ckpt). Prints
 1. log-prob and gradient agreement of attention="flex" with "dense" (and, for the size of bf16
    rounding alone, of the padded layout with "dense");
 2. forward + backward seconds of token_logprobs(...).sum(), dense vs flex, eager and with
    grpo.models.compile_blocks: median of --reps after --warmup calls, and peak memory.
A variant that fails prints its error and the rest go on.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: grpo need not be installed
from grpo.logprobs import FLEX_BLOCK, pack, shared_layout, token_logprobs
from grpo.models import compile_blocks


def smollm2_shaped_model(grad_ckpt: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16).cuda()
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    assert model.config._attn_implementation == "sdpa"
    return model


def std_step_batch(prompts: int, group: int, tokens: int, vocab: int):
    gen = torch.Generator().manual_seed(0)
    prompt_ids = []
    for _ in range(prompts):
        length = int(torch.randint(100, 141, (1,), generator=gen))
        prompt_ids += [torch.randint(3, vocab, (length,), generator=gen).tolist()] * group
    completions = torch.randint(3, vocab, (prompts * group, tokens), generator=gen)
    return pack(prompt_ids, completions, torch.ones_like(completions), pad_id=2).to("cuda")


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])


def logprobs_and_grads(model, batch, **kw):
    model.zero_grad(set_to_none=True)
    lp, _ = token_logprobs(model, batch, **kw)
    lp.sum().backward()
    return lp.detach().float(), grads(model)


def agreement(model, batch) -> None:
    print("\n1. agreement with attention='dense' (eager model)")
    dense = logprobs_and_grads(model, batch, attention="dense")
    print(f"   dense: grad norm {dense[1].norm():.4f}")
    for name, kw in (("flex", dict(attention="flex")), ("padded layout", dict(share_prompts=False))):
        try:
            lp, g = logprobs_and_grads(model, batch, **kw)
        except Exception as e:  # noqa: BLE001 - report and go on with the other variants
            print(f"   {name}: FAILED {type(e).__name__}: {e}")
            traceback.print_exc()
            continue
        diff = (lp - dense[0]).abs()
        print(f"   {name}: logp max |diff| {diff.max():.3e}, mean {diff.mean():.3e}; grad norm {g.norm():.4f}, "
              f"|g - g_dense| / |g_dense| {(g - dense[1]).norm() / dense[1].norm():.3e}")


def time_variant(model, batch, attention: str, warmup: int, reps: int) -> dict:
    def step():
        model.zero_grad(set_to_none=True)
        lp, _ = token_logprobs(model, batch, attention=attention)
        lp.sum().backward()
        torch.cuda.synchronize()

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "first_call_s": first,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def timings(base, batch, warmup: int, reps: int) -> None:
    print(f"\n2. forward + backward of token_logprobs(...).sum(): median of {reps} after {warmup} warm-up calls")
    rows = []
    base.zero_grad(set_to_none=True)  # copies below carry no gradients
    for compiled in (False, True):
        model = copy.deepcopy(base)
        label = "compile_blocks" if compiled else "eager"
        if compiled:
            try:
                compile_blocks(model)
            except Exception as e:  # noqa: BLE001
                print(f"   compile_blocks FAILED {type(e).__name__}: {e}")
                continue
        for attention in ("dense", "flex"):
            try:
                r = time_variant(model, batch, attention, warmup, reps)
            except Exception as e:  # noqa: BLE001
                print(f"   {label} / {attention}: FAILED {type(e).__name__}: {e}")
                traceback.print_exc()
                rows.append((label, attention, None))
                continue
            print(f"   {label} / {attention}: {r['median_s']:.4f} s", flush=True)
            rows.append((label, attention, r))
        del model
        torch.cuda.empty_cache()
    print(f"\n   {'layers':<15} {'attention':<9} {'median s':>9} {'min s':>8} {'1st call s':>10} {'peak GiB':>9}")
    for label, attention, r in rows:
        if r is None:
            print(f"   {label:<15} {attention:<9} {'failed':>9}")
        else:
            print(f"   {label:<15} {attention:<9} {r['median_s']:9.4f} {r['min_s']:8.4f} {r['first_call_s']:10.1f} "
                  f"{r['peak_gib']:9.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    import transformers

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    print(f"{torch.cuda.get_device_name()}: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"triton {triton_version}; gradient checkpointing {args.grad_ckpt}")
    model = smollm2_shaped_model(args.grad_ckpt)
    batch = std_step_batch(args.prompts, args.group, args.tokens, model.config.vocab_size)
    dense, flex = shared_layout(batch), shared_layout(batch, multiple=FLEX_BLOCK)
    print(f"rows {batch.input_ids.shape[0]} x {batch.input_ids.shape[1]} columns padded; shared layout "
          f"{tuple(dense.input_ids.shape)} dense, {tuple(flex.input_ids.shape)} flex")
    try:
        print(f"BlockMask sparsity (share of 128 x 128 tiles skipped): {flex.block_mask().sparsity():.1f}%")
    except Exception as e:  # noqa: BLE001
        print(f"BlockMask FAILED {type(e).__name__}: {e}")
        traceback.print_exc()
    agreement(model, batch)
    timings(model, batch, args.warmup, args.reps)


if __name__ == "__main__":
    main()

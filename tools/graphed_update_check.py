"""GPU check of grpo.graphed: CUDA-graphed update forward/backward against the eager `token_logprobs`.

    python tools/graphed_update_check.py --gguf-dir /tmp/smollm2 [--reps 8]

SmolLM2-135M in bf16 with compiled layers and gradient checkpointing (the bench's update), one std-step
micro-batch (16 prompts x 8 completions x 256 tokens, random tokens, prompts of 40-90 tokens). Prints the
largest log-prob difference, the relative difference of the gradients (graphed vs eager, same inputs), a
second prompt width (a second capture), and the median seconds of forward + loss + backward each way.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from grpo import std_step  # noqa: E402
from grpo.graphed import GraphedLogprobs  # noqa: E402
from grpo.logprobs import pack, token_logprobs  # noqa: E402
from grpo.models import compile_blocks  # noqa: E402


def batch_of(seed: int, prompts: int, group: int, tokens: int, lo: int, hi: int, vocab: int):
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
           for _ in range(prompts)]
    rows = [p for p in ids for _ in range(group)]
    comp = torch.randint(0, vocab, (prompts * group, tokens), generator=g)
    mask = torch.ones(prompts * group, tokens)
    return pack(rows, comp, mask, 0).to("cuda")


def loss_of(logp, mask, adv):
    return -((logp * adv[:, None]) * mask).sum() / mask.sum()


def grads(model):
    return torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf-dir", required=True)
    p.add_argument("--reps", type=int, default=8)
    p.add_argument("--arena", action=argparse.BooleanOptionalAction, default=True,
                   help="graphed side: gradient checkpoints in a scratch buffer the size of std-step's KV cache "
                        "(30 layers x K, V [128, 3, 320, 64] bf16), filled with junk first (grpo.graphed.checkpoints_in)")
    args = p.parse_args()
    b = std_step.parse_workload(["--gguf-dir", args.gguf_dir], gpu=True)
    config, sd, tok = std_step.load_weights(b)
    model = std_step.build_model(config, sd, torch.bfloat16, "cuda")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    compile_blocks(model)
    model.train()
    vocab = config.vocab_size
    batch = batch_of(0, 16, 8, 256, 40, 90, vocab)
    adv = torch.randn(128, device="cuda")
    arena = None
    if args.arena:
        arena = torch.empty(30 * 2 * 128 * 3 * 320 * 64, dtype=torch.bfloat16, device="cuda").uniform_(-8, 8)
    graphed = GraphedLogprobs(model, 1.0, compile_head=True, scratch=lambda: arena)

    def eager():
        logp, ent = token_logprobs(model, batch, 1.0, with_entropy=True, compile_head=True, attention="rows")
        loss_of(logp, batch.completion_mask, adv).backward()
        return logp.detach(), ent

    def graph():
        logp, ent = graphed(batch)
        loss_of(logp, batch.completion_mask, adv).backward()
        return logp.detach(), ent

    for p_ in model.parameters():
        p_.grad = None
    t = time.perf_counter()
    lp_e, ent_e = eager()
    torch.cuda.synchronize()
    print(f"eager first call (compiles): {time.perf_counter() - t:.1f} s", flush=True)
    g_e = grads(model)
    for p_ in model.parameters():
        p_.grad.zero_()
    t = time.perf_counter()
    lp_g, ent_g = graph()
    torch.cuda.synchronize()
    print(f"graphed first call (warm-up + capture): {time.perf_counter() - t:.1f} s", flush=True)
    g_g = grads(model)
    print(f"logp max |diff| {float((lp_e - lp_g).abs().max()):.4g} (|logp| mean {float(lp_e.abs().mean()):.3g}); "
          f"entropy max |diff| {float((ent_e - ent_g).abs().max()):.4g}")
    print(f"grad rel diff {float((g_e - g_g).norm() / g_e.norm()):.4g}, cosine "
          f"{float(torch.nn.functional.cosine_similarity(g_e, g_g, dim=0)):.6f}")
    # determinism of the replay, and accumulation: a second replay on the same inputs adds the same grads
    graph()
    g_2 = grads(model)
    print(f"after a second replay: grad rel diff to 2x the first {float((g_2 - 2 * g_g).norm() / (2 * g_g).norm()):.3g}")

    def timed(fn):
        out = []
        for _ in range(args.reps):
            for p_ in model.parameters():
                if p_.grad is not None:
                    p_.grad.zero_()
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            out.append(time.perf_counter() - t)
        return statistics.median(out), min(out)

    e = timed(eager)
    g = timed(graph)
    print(f"forward + backward, median (min) of {args.reps}: eager {e[0]:.4f} ({e[1]:.4f}) s, "
          f"graphed {g[0]:.4f} ({g[1]:.4f}) s", flush=True)
    batch2 = batch_of(1, 16, 8, 256, 100, 140, vocab)
    batch = batch2
    t = time.perf_counter()
    graph()
    torch.cuda.synchronize()
    print(f"second prompt width, first call: {time.perf_counter() - t:.1f} s; graphs held: {len(graphed.graphs)}")
    lp_g2, _ = graph()
    for p_ in model.parameters():
        p_.grad.zero_()
    lp_g2, _ = graph()
    g_g2 = grads(model)
    for p_ in model.parameters():
        p_.grad.zero_()
    lp_e2, _ = eager()
    g_e2 = grads(model)
    print(f"second width: logp max |diff| {float((lp_e2 - lp_g2).abs().max()):.4g}, grad rel diff "
          f"{float((g_e2 - g_g2).norm() / g_e2.norm()):.4g}")
    print(f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, "
          f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")


if __name__ == "__main__":
    main()

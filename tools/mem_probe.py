"""What is alive at the std-step's peak GPU memory: a few training steps under the allocator's history.

    python tools/mem_probe.py --gguf-dir /tmp/smollm2 [--steps 3] [--top 25] [std-step flags (grpo.std_step) after --]

Runs `--steps` ordinary steps with `torch.cuda.memory._record_memory_history` on, prints the allocated
memory before, at the peak of and after each sampling call, update and optimizer step (the bench's
"peak GiB" is the highest of these peaks) and the reserved memory after each step, then replays the
recorded alloc/free events to find the moment of the highest allocated total and lists the blocks alive
then, grouped by the innermost frame of this repository (or the innermost Python frame) that allocated
them. Writes the raw snapshot to $OUT/mem_snapshot.pickle when $OUT is set (pytorch.org/memory_viz reads it).
"""
from __future__ import annotations

import argparse
import collections
import os
import pickle
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from grpo import std_step  # noqa: E402


def owner(frames: list[dict], size: int) -> str:
    """The innermost frame from this repository, else the innermost frame at all, else the block's size."""
    if not frames:
        return f"a block of {size / 2**20:.1f} MiB"
    for f in frames:
        if f.get("filename", "").startswith(REPO) and "mem_probe" not in f["filename"]:
            return f"{os.path.relpath(f['filename'], REPO)}:{f['line']} {f['name']}"
    return f"{frames[0]['filename'].split('site-packages/')[-1]}:{frames[0]['line']}"


def peak_blocks(snapshot: dict, top: int) -> None:
    """Replay the device's alloc/free trace; print the blocks alive at the highest allocated total."""
    trace = snapshot["device_traces"][0]
    base = 0  # bytes already allocated before the history started, from the segments' live blocks at dump
    live, cur, best, best_i = {}, 0, -1, -1
    for i, e in enumerate(trace):
        if e["action"] == "alloc":
            live[e["addr"]] = e
            cur += e["size"]
        elif e["action"] == "free_completed" and e["addr"] in live:
            cur -= live.pop(e["addr"])["size"]
        if cur > best:
            best, best_i = cur, i
    live = {}
    for e in trace[:best_i + 1]:
        if e["action"] == "alloc":
            live[e["addr"]] = e
        elif e["action"] == "free_completed":
            live.pop(e["addr"], None)
    groups = collections.defaultdict(lambda: [0, 0])
    for e in live.values():
        g = groups[owner(e.get("frames", []), e["size"])]
        g[0] += e["size"]
        g[1] += 1
    print(f"\npeak of the traced allocations: {best / 2**30:.3f} GiB above the start (event {best_i} of {len(trace)};"
          f" {base} B before)")
    for name, (size, n) in sorted(groups.items(), key=lambda x: -x[1][0])[:top]:
        print(f"  {size / 2**20:9.1f} MiB {n:5d} blocks  {name}")
    tail = trace[best_i]
    print(f"the peak event: {tail['action']} {tail['size'] / 2**20:.1f} MiB by {owner(tail.get('frames', []), tail['size'])}")


def phase_peaks(state, train) -> None:
    """Print allocated before / peak within / allocated after each sampling call, update and optimizer step."""
    def wrapped(name, fn):
        def run(*a, **k):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = fn(*a, **k)
            torch.cuda.synchronize()
            print(f"  {name}: allocated {before / 2**30:.3f} -> peak {torch.cuda.max_memory_allocated() / 2**30:.3f}"
                  f" -> {torch.cuda.memory_allocated() / 2**30:.3f} GiB", flush=True)
            return out
        return run
    state.sampler.generate = wrapped("sampling", state.sampler.generate)
    train.policy_update = wrapped("policy_update", train.policy_update)
    state.optimizer.step = wrapped("optimizer.step", state.optimizer.step)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf-dir", default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--no-stacks", action=argparse.BooleanOptionalAction, default=True)
    args, rest = p.parse_known_args()
    import grpo.train as train
    from grpo.data.records import Example

    assert torch.cuda.is_available(), "mem_probe needs a CUDA device"
    b = std_step.parse_workload((["--gguf-dir", args.gguf_dir] if args.gguf_dir else ["--cpu-tiny"]) + rest, gpu=True)
    config, sd, tok = std_step.load_weights(b)
    rows = std_step.arithmetic_rows(b.prompts * args.steps)
    examples = [Example(id=str(i), task="arithmetic", prompt=q, answer=a) for i, (q, a) in enumerate(rows)]
    cfg = std_step.ours_config(b, True, tempfile.mkdtemp())
    model = std_step.build_model(config, sd, std_step.ours_dtype(b, True), "cuda")
    state = train.setup(cfg, model=model, tokenizer=tok)
    if b.keep_cache is not None:
        state.sampler.keep_cache = b.keep_cache
    state.sampler = std_step.FixedLength(state.sampler)
    phase_peaks(state, train)
    print(f"after setup: allocated {torch.cuda.memory_allocated() / 2**30:.3f} GiB", flush=True)
    # no stacks: gathering Python frames inside the checkpointed, compiled backward crashed (torch 2.11,
    # "SystemError: apply returned NULL"); blocks are then told apart by their sizes
    torch.cuda.memory._record_memory_history(max_entries=400_000, context=None if args.no_stacks else "all",
                                             stacks="python")
    for s in range(args.steps):
        t = time.perf_counter()
        train.train_step(state, examples[s * b.prompts:(s + 1) * b.prompts])
        torch.cuda.synchronize()
        print(f"step {s + 1}: {time.perf_counter() - t:.3f} s, max reserved "
              f"{torch.cuda.max_memory_reserved() / 2**30:.3f} GiB, allocated after "
              f"{torch.cuda.memory_allocated() / 2**30:.3f} GiB", flush=True)
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak_blocks(snap, args.top)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "mem_snapshot.pickle"), "wb") as f:
            pickle.dump(snap, f)


if __name__ == "__main__":
    main()

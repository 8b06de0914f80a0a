"""Where one std-step goes on the GPU: a whole training step under torch.profiler, summarised per phase.

    python tools/step_trace.py --gguf-dir /tmp/smollm2 [--warm 3] [std-step flags (grpo.std_step) after --]

Runs `--warm` ordinary steps (compiles, graph captures), then one step with CPU and CUDA activity
recorded, each phase (sampling, rewards, logprobs forward, backward, optimizer) marked with
record_function (no synchronisation added, so the step runs as a timed one does). Prints, per phase:
its CPU wall window, the summed kernel time of the kernels that started in it, and the busy fraction;
then the largest kernels of the decode loop and of the update, and the update's longest GPU idle gaps.
Writes the chrome trace (gzipped) to $OUT/step_trace.json.gz when $OUT is set.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from grpo import std_step  # noqa: E402


def marked(name, fn):
    def run(*a, **k):
        with torch.profiler.record_function(name):
            return fn(*a, **k)
    return run


def busy(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (µs)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def summarise(trace: dict, top: int) -> None:
    ev = trace["traceEvents"]
    kernels = [e for e in ev if e.get("cat") == "kernel"]
    marks = [e for e in ev if e.get("cat") == "user_annotation" and e.get("name", "").startswith("phase/")]
    flows = {}  # kernel correlation -> launching CPU time (cudaLaunchKernel / cudaGraphLaunch)
    for e in ev:
        if e.get("cat") == "cuda_runtime":
            flows[e.get("args", {}).get("correlation")] = e["ts"]
    step = next(m for m in marks if m["name"] == "phase/step")
    t0, t1 = step["ts"], step["ts"] + step["dur"]
    print(f"step wall {step['dur'] / 1e6:.3f} s; kernels in it: {len(kernels)}")
    k_all = [(k["ts"], k["ts"] + k["dur"]) for k in kernels if t0 <= k["ts"] <= t1 + 1e6]
    print(f"GPU busy over the step: {busy(k_all) / 1e6:.3f} s (union of kernel intervals)")
    print(f"{'phase':<22}{'cpu wall s':>11}{'kernels s':>11}{'busy s':>9}{'n':>8}")
    for m in sorted(marks, key=lambda m: m["ts"]):
        if m["name"] == "phase/step":
            continue
        s, e = m["ts"], m["ts"] + m["dur"]
        # kernels launched from inside the window (by their launch call's CPU time)
        ks = [k for k in kernels if s <= flows.get(k.get("args", {}).get("correlation"), -1) <= e]
        iv = [(k["ts"], k["ts"] + k["dur"]) for k in ks]
        print(f"{m['name'][6:]:<22}{m['dur'] / 1e6:>11.4f}{sum(k['dur'] for k in ks) / 1e6:>11.4f}"
              f"{busy(iv) / 1e6:>9.4f}{len(ks):>8}")
    for phase in ("sampling", "update"):
        win = [m for m in marks if m["name"] == f"phase/{phase}"]
        if not win:
            continue
        s, e = win[0]["ts"], win[0]["ts"] + win[0]["dur"]
        ks = [k for k in kernels if s <= k["ts"] <= e]
        agg = collections.defaultdict(lambda: [0.0, 0])
        for k in ks:
            agg[k["name"][:90]][0] += k["dur"]
            agg[k["name"][:90]][1] += 1
        print(f"\n{phase}: kernels that ran in its window ({len(ks)}, {sum(k['dur'] for k in ks) / 1e6:.4f} s)")
        for name, (d, n) in sorted(agg.items(), key=lambda x: -x[1][0])[:top]:
            print(f"  {d / 1e3:9.2f} ms {n:7d}x {d / max(n, 1):7.2f} us  {name}")
        ks.sort(key=lambda k: k["ts"])
        gaps = [(ks[i + 1]["ts"] - (ks[i]["ts"] + ks[i]["dur"]), ks[i]["name"][:60], ks[i + 1]["name"][:60])
                for i in range(len(ks) - 1)]
        gaps = [g for g in gaps if g[0] > 0]
        print(f"  idle between its kernels: {sum(g[0] for g in gaps) / 1e3:.2f} ms in {len(gaps)} gaps; longest:")
        for g, a, b in sorted(gaps, reverse=True)[:12]:
            print(f"    {g / 1e3:8.2f} ms after {a} -> {b}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf-dir", default=None)
    p.add_argument("--warm", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--stack", action="store_true", help="record Python frames too (with_stack): find host gaps' code")
    args, rest = p.parse_known_args()
    import grpo.train as train
    from grpo.data.records import Example
    from torch.profiler import ProfilerActivity, profile

    gpu = torch.cuda.is_available()
    b = std_step.parse_workload((["--gguf-dir", args.gguf_dir] if args.gguf_dir else ["--cpu-tiny"]) + rest, gpu=gpu)
    dev = "cuda" if gpu else "cpu"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    config, sd, tok = std_step.load_weights(b)
    rows = std_step.arithmetic_rows(b.prompts * (args.warm + 2))
    examples = [Example(id=str(i), task="arithmetic", prompt=q, answer=a) for i, (q, a) in enumerate(rows)]
    cfg = std_step.ours_config(b, gpu, tempfile.mkdtemp())
    model = std_step.build_model(config, sd, std_step.ours_dtype(b, gpu), dev)
    state = train.setup(cfg, model=model, tokenizer=tok)
    state.sampler = std_step.FixedLength(state.sampler)
    if os.environ.get("STEP_TRACE_THREADS"):  # e.g. 1: no intra-op CPU threads for the host-side tensor work
        torch.set_num_threads(int(os.environ["STEP_TRACE_THREADS"]))
    print(f"torch CPU threads: {torch.get_num_threads()}", flush=True)
    for s in range(args.warm):
        t = time.perf_counter()
        train.train_step(state, examples[s * b.prompts:(s + 1) * b.prompts])
        sync()
        print(f"warm step {s + 1}: {time.perf_counter() - t:.3f} s", flush=True)
    state.sampler.generate = marked("phase/sampling", state.sampler.generate)
    patched = {n: getattr(train, n) for n in ("score_rollout", "token_logprobs", "policy_update")}
    train.score_rollout = marked("phase/rewards", train.score_rollout)
    train.token_logprobs = marked("phase/logprobs_fwd", train.token_logprobs)
    train.policy_update = marked("phase/update", train.policy_update)
    state.accelerator.backward = marked("phase/backward", state.accelerator.backward)
    state.optimizer.step = marked("phase/optimizer", state.optimizer.step)
    batch = examples[args.warm * b.prompts:(args.warm + 1) * b.prompts]
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else []),
                 with_stack=args.stack) as prof:
        sync()
        with torch.profiler.record_function("phase/step"):
            train.train_step(state, batch)
            sync()
    for n, f in patched.items():
        setattr(train, n, f)
    tmp = os.path.join(tempfile.mkdtemp(), "trace.json")
    prof.export_chrome_trace(tmp)
    with open(tmp) as f:
        trace = json.load(f)
    summarise(trace, args.top)
    if os.environ.get("OUT"):
        with open(tmp, "rb") as src, gzip.open(os.path.join(os.environ["OUT"], "step_trace.json.gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)


if __name__ == "__main__":
    main()

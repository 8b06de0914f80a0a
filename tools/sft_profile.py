"""Time the SFT stage's optimizer steps on the real model and print where one step's device time goes.

  python tools/sft_profile.py --model /tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --gsm8k /tmp/gsm8k \
      [--steps 20] [--micro 8] [--batch 16] [--set optim.lr=...]

The workload is the r1 recipes' cold start: GSM8K train worked solutions as <think>/<answer> targets,
r1_zero template, fp32 weights with bf16 autocast (run.mixed_precision auto). Prints seconds per step
(median after 3 warm-up steps) and the 25 ops with the most device (or CPU) time in one profiled step.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--gsm8k", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from grpo.models import load_model, load_tokenizer
    from grpo.sft import fit, load_sft_examples, rows_for
    from grpo.stages import build_stage
    from grpo.tracking import RunWriter

    out = tempfile.mkdtemp(prefix="sft_profile_")
    tree = {"model": {"name": args.model},
            "data": {"train": {"source": "cold_start", "options": {"dataset": "gsm8k", "path": args.gsm8k,
                                                                  "split": "train"}, "limit": args.batch * (args.steps + 4)},
                     "max_seq_len": 768},
            "optim": {"steps": args.steps, "batch_size": args.batch, "micro_batch_size": args.micro, "lr": 2e-5},
            "run": {"output_dir": out, "progress": False}}
    cfg = build_stage("sft", tree, args.set)
    tok = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name)
    rows = rows_for(tok, load_sft_examples([cfg.data.train]), cfg.data)
    print(f"{len(rows)} rows, mean length {statistics.mean(len(r.input_ids) for r in rows):.0f} tokens", flush=True)
    writer = RunWriter(out)
    model, summary = fit(model, tok, rows, cfg.optim, cfg.run, writer)
    import json

    el = [json.loads(x)["elapsed_s"] for x in open(f"{out}/metrics.jsonl") if "elapsed_s" in x]
    per = [b - a for a, b in zip(el, el[1:])]
    print(f"SFT s/step: median {statistics.median(per[3:] or per):.3f} (steps {len(el)}; all "
          f"{[round(x, 3) for x in per]})", flush=True)

    # one more step under the profiler (a fresh fit of 1 step on the trained model)
    from torch.profiler import ProfilerActivity, profile

    gpu = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    cfg.optim.steps = 1
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        fit(model, tok, rows[:args.batch], cfg.optim, cfg.run, RunWriter(out + "/p"))
        if gpu:
            torch.cuda.synchronize()
        print(f"profiled step (incl. optimizer setup): {time.perf_counter() - t0:.3f} s", flush=True)
    key = "cuda_time_total" if gpu else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25), flush=True)


if __name__ == "__main__":
    main()

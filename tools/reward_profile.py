"""Reward scoring of std-step batches (16 prompts x G=8, 256 new tokens), timed as the trainer scores them.

  # once: completions of SmolLM2-135M-Instruct on CPU (fp32 engine, temperature 1.0, no early stop), for
  # the prompts of std-step steps 0..3 (a few CPU minutes per step)
  GRPO_CACHE=/tmp/grpocache OMP_NUM_THREADS=2 python tools/reward_profile.py generate /tmp/reward_texts.json
  GRPO_CACHE=/tmp/grpocache OMP_NUM_THREADS=2 python tools/reward_profile.py generate \
      '/tmp/reward_texts_step{step}.json' --steps 1,2,3
  # then: time grpo.scoring.score_rollout with the default rewards (accuracy + format), one call per file
  python tools/reward_profile.py profile /tmp/reward_texts.json /tmp/reward_texts_step{1,2,3}.json \
      [--reps 10] [--values out.json] [--check ref.json]

`profile` builds the RolloutBatch and examples the trainer would have (task "arithmetic", the gold answers of
grpo.std_step.arithmetic_rows) and calls score_rollout with the rewards of the default config. Each timed call
starts as a new training step does: no verdict in the verifier's cache, and a running sympy helper whose
sympy caches hold nothing of this batch (a fresh helper, warmed up outside the timing; a helper reused on
the same batch would answer from sympy's cache). Then one call per file under cProfile (main process only:
the helper's sympy time shows as `select`). `--values` saves the reward table; `--check` compares it with a
saved one and exits non-zero on any difference.

Measured 2026-11-24 on the 2-core CPU machine (OMP_NUM_THREADS=1, the four files above, 10 calls each, two runs):
per 128 completions median 181-183 ms / max 416-439 ms before the verifier's fast paths (commit b2a623c),
47 ms / 96-101 ms after, with identical reward tables.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def generate(path: str, prompts: int, group: int, tokens: int, seed: int, steps: list[int]) -> None:
    import torch

    from grpo.std_step import arithmetic_rows, build_model, chat_prompt_ids, load_weights
    from grpo.engine import EngineSampler
    from grpo.models import bundled_gguf_path
    from grpo.rollout import SamplingParams

    gguf = bundled_gguf_path("smollm2-135m-instruct")
    config, sd, tok = load_weights(argparse.Namespace(gguf_dir=str(gguf.parent)))
    model = build_model(config, sd, torch.float32, "cpu")
    sampler = EngineSampler(model, tok, max_batch=prompts * group, max_seq_len=512)
    params = SamplingParams(max_new_tokens=tokens, temperature=1.0, min_new_tokens=tokens)
    for step in steps:  # the bench's step s takes rows[s * prompts:(s + 1) * prompts]
        rows = arithmetic_rows(prompts * (step + 1))[step * prompts:]
        torch.manual_seed(seed + step)
        t0 = time.perf_counter()
        out = sampler.generate(chat_prompt_ids(tok, rows), group, params)
        print(f"step {step}: {len(out.texts)} x {tokens} tokens in {time.perf_counter() - t0:.0f} s", flush=True)
        ids = [r[m.bool()].tolist() for r, m in zip(out.completion_ids, out.completion_mask)]
        data = {"prompts": [q for q, _ in rows], "answers": [a for _, a in rows], "group": out.group.tolist(),
                "texts": out.texts, "completion_ids": ids,
                "meta": {"model": gguf.name, "step": step, "prompts": prompts, "group": group, "tokens": tokens,
                         "seed": seed + step, "temperature": 1.0}}
        out_path = path.format(step=step)
        Path(out_path).write_text(json.dumps(data))
        print(f"wrote {out_path}", flush=True)


def trainer_inputs(data: dict):
    """What `train_step` hands `score_rollout`: rewards of the default config, examples, chats, rollout."""
    import torch

    from grpo.data.records import Example
    from grpo.data.templates import to_messages
    from grpo.config import load_config
    from grpo.rollout import RolloutBatch
    from grpo.rewards.registry import load_rewards

    cfg = load_config(None, ["data.template=plain"])  # the bench's overrides leave the rewards at the default
    rewards = load_rewards(cfg.rewards)
    examples = [Example(id=str(i), task="arithmetic", prompt=q, answer=a)
                for i, (q, a) in enumerate(zip(data["prompts"], data["answers"]))]
    chats = [to_messages(e, cfg.data.template) for e in examples]
    ids = data["completion_ids"]
    width = max(len(r) for r in ids)
    cids = torch.tensor([r + [0] * (width - len(r)) for r in ids])
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in ids])
    group = torch.tensor(data["group"])
    rollout = RolloutBatch(prompt_ids=[[] for _ in ids], completion_ids=cids, completion_mask=mask, logprobs=None,
                           texts=data["texts"], group=group, truncated=torch.ones(len(ids), dtype=torch.bool))
    return rewards, examples, chats, rollout, cfg.data.assistant_prefix, cfg.data.template


def profile(paths: list[str], reps: int, top: int, values_out: str | None, check: str | None) -> int:
    from grpo.scoring import score_rollout
    from grpo.rewards import math as rmath
    from grpo.rewards.math import POOL, _verify_cached

    def fresh_helpers():
        """As many running helpers as a batch's checks use at once (PARALLEL_CHECKS; 1 before it existed),
        each fresh: sympy imported, nothing of these batches cached."""
        POOL.close()
        n = getattr(rmath, "PARALLEL_CHECKS", 1)
        if n > 1:  # side by side, so each check takes (or starts) its own helper
            rmath.verify_all(["1"] * n, [f"x + {i}" for i in range(n)], 30.0)
        else:
            rmath.verify("1", "x")
        _verify_cached.cache_clear()

    batches = [trainer_inputs(json.loads(Path(p).read_text())) for p in paths]

    def call(inputs):
        """One scoring call as in a new training step: no verdict cached, a sympy helper already running
        but with empty sympy caches (a fresh one, warmed up outside the timing)."""
        fresh_helpers()
        t0 = time.perf_counter()
        table = score_rollout(*inputs)
        return time.perf_counter() - t0, table

    tables = [call(b)[1] for b in batches]  # warm-up: imports, regex compilation, the first helper
    times = [[call(b)[0] for _ in range(reps)] for b in batches]
    for path, t, table in zip(paths, times, tables):
        n = len(table.values)
        cols = {name: [row[j] for row in table.values] for j, name in enumerate(table.names)}
        print(f"{path}: {n} completions, {reps} calls: median {statistics.median(t) * 1e3:.1f} ms, "
              f"max {max(t) * 1e3:.1f} ms, min {min(t) * 1e3:.1f} ms; "
              + ", ".join(f"{k} = 1.0 in {sum(v == 1.0 for v in c)}" for k, c in cols.items()))
    flat = [x for t in times for x in t]
    print(f"all {len(flat)} calls: median {statistics.median(flat) * 1e3:.1f} ms, max {max(flat) * 1e3:.1f} ms")
    prof = cProfile.Profile()
    for b in batches:
        fresh_helpers()
        prof.enable()
        score_rollout(*b)
        prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
    print(f"cProfile of one call per batch (main process only; the helper's sympy time shows as select):\n"
          + s.getvalue())
    values = {"names": tables[0].names, "values": [t.values for t in tables], "paths": paths}
    if values_out:
        Path(values_out).write_text(json.dumps(values))
    if check:
        ref = json.loads(Path(check).read_text())
        diff = [(b, i) for b, (rt, t) in enumerate(zip(ref["values"], values["values"]))
                for i, (x, y) in enumerate(zip(rt, t)) if x != y]
        same = (ref["names"] == values["names"] and not diff
                and [len(t) for t in ref["values"]] == [len(t) for t in values["values"]])
        print(f"reward values identical to {check}: {same}" + (f" (batch, row) differing: {diff[:20]}" if diff else ""))
        return 0 if same else 1
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="sample completions from SmolLM2-135M-Instruct on CPU into a JSON file")
    g.add_argument("path")
    g.add_argument("--prompts", type=int, default=16)
    g.add_argument("--group", type=int, default=8)
    g.add_argument("--tokens", type=int, default=256)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", default="0", help="bench steps whose prompts to use, e.g. 0,1,2 (PATH may hold {step})")
    p = sub.add_parser("profile", help="time score_rollout on a generated JSON file")
    p.add_argument("paths", nargs="+", help="JSON files written by generate (one scoring call each)")
    p.add_argument("--reps", type=int, default=10, help="timed calls per file")
    p.add_argument("--top", type=int, default=30, help="functions shown from cProfile")
    p.add_argument("--values", default=None, help="save the reward table here (JSON)")
    p.add_argument("--check", default=None, help="compare the reward table with one saved by --values")
    args = ap.parse_args(argv)
    if args.cmd == "generate":
        steps = [int(x) for x in args.steps.split(",")]
        if len(steps) > 1 and "{step}" not in args.path:
            ap.error("several --steps need '{step}' in PATH")
        generate(args.path, args.prompts, args.group, args.tokens, args.seed, steps)
        return 0
    return profile(args.paths, args.reps, args.top, args.values, args.check)


if __name__ == "__main__":
    sys.exit(main())

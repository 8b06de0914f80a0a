"""Table of tools/moe_balance_{gpu,cpu}.sh runs: steps, expert load max/mean (mean, max over steps, last), clip
fraction (clip_low + clip_high, mean over steps), reward first -> last, bias range last.

    python tools/moe_balance_summary.py OUT     # OUT: the folder those scripts wrote (*.metrics.jsonl)
"""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
print("run | steps | load max/mean mean, max, last | clip frac | reward first->last (mean of first/last 4) | "
      "bias range last | router entropy last | s/step")
for f in sorted(out.glob("*.metrics.jsonl")):
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    if not rows:
        print(f"{f.name}: no steps")
        continue
    load = [r["grpo/moe/load_max_over_mean"] for r in rows]
    clip = sum(r["clip_low"] + r["clip_high"] for r in rows) / len(rows)
    rew = [r["reward_mean"] for r in rows]
    k = min(4, len(rew))
    sec = sum(r["step_seconds"] for r in rows) / len(rows)
    print(f"{f.name[:-len('.metrics.jsonl')]} | {len(rows)} | {sum(load) / len(load):.3f}, {max(load):.3f}, {load[-1]:.3f} | {clip:.4f} | "
          f"{rew[0]:.3f}->{rew[-1]:.3f} ({sum(rew[:k]) / k:.3f}->{sum(rew[-k:]) / k:.3f}) | "
          f"{rows[-1]['grpo/moe/bias_range']:.4f} | {rows[-1]['grpo/moe/router_entropy']:.3f} | {sec:.2f}")
    print("   load per step: " + " ".join(f"{x:.2f}" for x in load))

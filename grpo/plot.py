"""Training curves as PNG files from a run's metrics.jsonl (matplotlib, Agg backend: no display needed).

`grpo plot RUN_DIR` writes RUN_DIR/plots/<name>.png for every group of metrics the run logged: GRPO's
reward (overall and per function), completion length, KL, entropy, clip fractions, zero-std fraction,
loss; SFT/distillation's loss and eval loss. Groups with no data are skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

# plot name -> metric keys drawn on it; "reward/*" expands to the per-function reward means
PLOTS: dict[str, list[str]] = {
    "reward": ["reward_mean", "reward/*"],
    "completion_length": ["completion_len_mean", "completion_len_max"],
    "kl": ["kl"],
    "entropy": ["entropy"],
    "clip_fraction": ["clip_low", "clip_high"],
    "zero_std_fraction": ["zero_std_frac"],
    "loss": ["loss"],
    "eval_loss": ["eval_loss"],
}


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
    return [s for s, _ in pts], [v for _, v in pts]


def _keys(rows: list[dict], pattern: str) -> list[str]:
    if not pattern.endswith("/*"):
        return [pattern]
    prefix = pattern[:-1]
    found = sorted({k for r in rows for k in r if k.startswith(prefix) and not k.endswith("_std")})
    return found


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per metric group found in run_dir/metrics.jsonl; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    out = Path(out_dir) if out_dir else run_dir / "plots"
    written = []
    for name, patterns in PLOTS.items():
        lines = [(k, *series(rows, k)) for p in patterns for k in _keys(rows, p)]
        lines = [ln for ln in lines if ln[1]]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, xs, ys in lines:
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=key)
        ax.set_xlabel("step")
        ax.set_title(f"{run_dir.name}: {name}")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written

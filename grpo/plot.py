"""Training curves and the held-out accuracy of a run, as PNG files (matplotlib, Agg backend: no display).

`grpo plot RUN_DIR` writes into RUN_DIR/plots/:
- one PNG per panel of metrics.jsonl: the total reward, each reward function, completion length,
  groups with no reward spread, entropy, KL, clipped tokens, loss, gradient norm, time per step;
  SFT/distillation's held-out loss. A panel with no data is skipped, and so are KL (when
  `algorithm.kl_coef` is 0 no reference model is loaded) and clipping (with one update per batch the
  ratio is exactly 1): lines that cannot move.
- `eval_accuracy.png`: held-out greedy pass@1 at each eval of the run (before, every `eval.every`
  steps, after), with sampled pass@k where the eval drew samples.
- `dashboard.png`: all of the above on one page.

For a pipeline's directory (stage folders with a DONE marker) it draws each stage's plots in the stage's
folder and, in <pipeline>/plots/, `eval_accuracy.png`: pass@1 after each stage that evaluated, in the
order the stages ran.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Panel:
    name: str                 # file name (without .png)
    title: str
    ylabel: str
    keys: tuple[str, ...]     # metric keys drawn; "reward/*" expands to the per-function means
    labels: tuple[str, ...] = ()   # legend labels for `keys` (default: the key itself)


PANELS = [
    Panel("reward", "reward (weighted sum of the reward functions)", "mean reward per completion",
          ("reward_mean",), ("total",)),
    Panel("rewards_by_function", "each reward function", "mean reward (applicable completions)", ("reward/*",)),
    Panel("completion_length", "completion length", "tokens", ("completion_len_mean", "completion_len_max"),
          ("mean", "max")),
    Panel("zero_std_fraction", "groups whose completions all scored the same (no learning signal)",
          "fraction of groups", ("zero_std_frac",)),
    Panel("entropy", "policy entropy on sampled tokens", "nats per token", ("entropy",)),
    Panel("kl", "KL to the reference model (k3 estimator)", "KL per token", ("kl",)),
    Panel("clip_fraction", "tokens whose probability ratio was clipped", "fraction of tokens",
          ("clip_low", "clip_high"), ("below 1 - eps_low", "above 1 + eps_high")),
    Panel("loss", "loss", "loss", ("loss",)),
    Panel("grad_norm", "gradient norm (before clipping)", "L2 norm", ("grad_norm",)),
    Panel("step_seconds", "time per step", "seconds",
          ("step_seconds", "gen_seconds", "reward_seconds", "update_seconds"),
          ("whole step", "sampling", "rewards", "update")),
    Panel("eval_loss", "held-out loss", "loss per token", ("eval_loss",)),
]


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
    # "reward/<name>" only: not its "_std", nor its counters "reward/<name>/none_frac", ".../errors"
    return sorted({k for r in rows for k in r
                   if k.startswith(prefix) and not k.endswith("_std") and "/" not in k[len(prefix):]})


def _run_config(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "config.yaml"
    if not p.is_file():
        return {}
    import yaml

    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError:
        return {}


def _cannot_move(panel: Panel, cfg: dict[str, Any], lines: list) -> bool:
    """KL without a reference model and clipping with one update per batch are 0 by construction."""
    if panel.name not in ("kl", "clip_fraction"):
        return False
    algo = cfg.get("algorithm") or {}
    if panel.name == "kl" and "kl_coef" in algo:
        return not algo["kl_coef"]
    if panel.name == "clip_fraction" and "num_iterations" in algo:
        return algo["num_iterations"] <= 1
    return all(v == 0 for _, _, ys in lines for v in ys)   # no config: drop a line that stayed at 0


def panel_lines(panel: Panel, rows: list[dict]) -> list[tuple[str, list[float], list[float]]]:
    """(legend label, steps, values) of each key of `panel` that has data."""
    out = []
    for i, pattern in enumerate(panel.keys):
        for key in _keys(rows, pattern):
            xs, ys = series(rows, key)
            if xs:
                label = panel.labels[i] if i < len(panel.labels) else key.removeprefix("reward/")
                out.append((label, xs, ys))
    return out


def eval_points(run_dir: Path) -> list[dict[str, Any]]:
    """The run's held-out evals in step order: {step, tag, pass1, pass_at_k}, from eval_<tag>.json
    (tags: before = step 0, step<N>, after = the last step)."""
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    rows = read_metrics(run_dir / "metrics.jsonl")
    last = summary.get("steps") or max((r.get("step", 0) for r in rows), default=0)
    points = []
    for f in run_dir.glob("eval_*.json"):
        tag = f.stem[len("eval_"):]
        step = 0 if tag == "before" else last if tag == "after" else int(tag[4:]) if tag[4:].isdigit() else None
        try:
            res = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        if step is not None and isinstance(res.get("pass1"), (int, float)):
            points.append({"step": step, "tag": tag, "pass1": res["pass1"], "pass_at_k": res.get("pass_at_k") or {},
                           "n": res.get("num_examples")})
    return sorted(points, key=lambda p: (p["step"], p["tag"] != "before"))


def _draw_panel(ax, panel: Panel, lines) -> None:
    for label, xs, ys in lines:
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=7)


def _draw_eval(ax, points: list[dict[str, Any]]) -> None:
    xs, ys = [p["step"] for p in points], [p["pass1"] for p in points]
    ax.plot(xs, ys, marker="o", label="pass@1 (greedy)")
    for p in points:
        ax.annotate(f"{p['pass1']:.3f}", (p["step"], p["pass1"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    for k in sorted({k for p in points for k in p["pass_at_k"]}, key=lambda k: int(k.split("@")[1])):
        kp = [(p["step"], p["pass_at_k"][k]) for p in points if k in p["pass_at_k"]]
        ax.plot([s for s, _ in kp], [v for _, v in kp], marker=".", linestyle="--", label=f"{k} (sampled)")
    n = points[-1].get("n")
    ax.set_xlabel("step (0: before training)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("held-out accuracy" + (f" ({n} prompts)" if n else "")
                 + (f": {ys[0]:.3f} -> {ys[-1]:.3f}" if len(ys) > 1 else ""), fontsize=9)
    ax.set_ylim(0, min(1.0, max(ys + [v for p in points for v in p["pass_at_k"].values()]) * 1.25 + 0.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def is_pipeline_dir(path: Path) -> bool:
    return any((d / "DONE").is_file() for d in path.iterdir() if d.is_dir()) if path.is_dir() else False


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the PNGs of a run (or of a pipeline: see the module docstring); returns the files written."""
    run_dir = Path(run_dir)
    if is_pipeline_dir(run_dir):
        return plot_pipeline(run_dir, out_dir)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cfg = read_metrics(run_dir / "metrics.jsonl"), _run_config(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "plots"
    drawn = [(p, lines) for p in PANELS if (lines := panel_lines(p, rows)) and not _cannot_move(p, cfg, lines)]
    points = eval_points(run_dir)
    written = []
    for panel, lines in drawn:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        _draw_panel(ax, panel, lines)
        fig.suptitle(run_dir.name, fontsize=8, x=0.99, ha="right")
        written.append(_save(fig, out / f"{panel.name}.png"))
    if points:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        _draw_eval(ax, points)
        fig.suptitle(run_dir.name, fontsize=8, x=0.99, ha="right")
        written.append(_save(fig, out / "eval_accuracy.png"))
    n = len(drawn) + bool(points)
    if n:
        cols = min(3, n)
        rows_ = -(-n // cols)
        fig, axes = plt.subplots(rows_, cols, figsize=(5 * cols, 3.3 * rows_), squeeze=False)
        flat = list(axes.flat)
        if points:
            _draw_eval(flat.pop(0), points)
        for ax, (panel, lines) in zip(flat, drawn):
            _draw_panel(ax, panel, lines)
        for ax in flat[len(drawn):]:
            ax.axis("off")
        fig.suptitle(f"{run_dir.name}: {max((r.get('step', 0) for r in rows), default=0)} steps", fontsize=11)
        written.append(_save(fig, out / "dashboard.png"))
    return written


def stage_evals(root: Path) -> list[tuple[str, float]]:
    """(label, greedy pass@1) of every finished stage that evaluated, in the order the stages finished:
    an eval stage's result, a GRPO stage's before/after evals."""
    done = sorted((d for d in root.iterdir() if (d / "DONE").is_file()), key=lambda d: (d / "DONE").stat().st_mtime)
    out = []
    for d in done:
        try:
            rec = json.loads((d / "DONE").read_text())
        except json.JSONDecodeError:
            continue
        s = rec.get("summary") or {}
        if rec.get("stage") == "eval" and isinstance(s.get("pass1"), (int, float)):
            out.append((d.name, s["pass1"]))
        for tag in ("before", "after"):
            e = s.get(f"eval_{tag}")
            if isinstance(e, dict) and isinstance(e.get("pass1"), (int, float)):
                out.append((f"{d.name} ({tag})", e["pass1"]))
    return out


def plot_pipeline(root: Path, out_dir: str | Path | None = None, stages: bool = True) -> list[Path]:
    """Each finished stage's plots (in its folder) and <root>/plots/eval_accuracy.png across stages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if stages:
        for d in sorted(root.iterdir()):
            if (d / "DONE").is_file() and (d / "metrics.jsonl").is_file():
                written += plot_run(d)
    evals = stage_evals(root)
    if evals:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(evals) + 2), 4))
        bars = ax.bar(range(len(evals)), [v for _, v in evals], color="tab:blue")
        ax.bar_label(bars, labels=[f"{v:.3f}" for _, v in evals], fontsize=8)
        ax.set_xticks(range(len(evals)), [n for n, _ in evals], rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("stage, in the order it ran")
        ax.set_ylabel("held-out accuracy, pass@1 (greedy)")
        ax.set_title(f"{root.name}: held-out accuracy after each stage", fontsize=10)
        ax.set_ylim(0, min(1.0, max(v for _, v in evals) * 1.25 + 0.01))
        ax.grid(alpha=0.3, axis="y")
        written.append(_save(fig, (Path(out_dir) if out_dir else root / "plots") / "eval_accuracy.png"))
    return written

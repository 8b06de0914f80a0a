import json
import os

import pytest

from grpo import plot
from grpo.cli import main
from grpo.plot import eval_points, plot_run, stage_evals

PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(tmp_path, steps=5, **extra):
    rows = [{"step": s, "reward_mean": s / 10, "reward/accuracy": s / 20, "reward/accuracy_std": 0.1,
             "kl": 0.01 * s, "entropy": 1.0, "clip_low": 0.0, "clip_high": 0.1, "zero_std_frac": 0.5,
             "completion_len_mean": 10 + s, "completion_len_max": 20 + s, "loss": 1.0 / s, "grad_norm": 0.5,
             "step_seconds": 2.0, "gen_seconds": 1.0, "reward_seconds": 0.1, "update_seconds": 0.8, **extra}
            for s in range(1, steps + 1)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _eval(run, tag, pass1, **kw):
    (run / f"eval_{tag}.json").write_text(json.dumps({"tag": tag, "num_examples": 200, "pass1": pass1, **kw}))


@pytest.fixture
def figures(monkeypatch):
    """Every figure plot.py saves, by file name, so tests can read its axes."""
    seen = {}
    save = plot._save

    def keep(fig, path):
        seen[path.name] = [(ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) for ax in fig.axes if ax.axison]
        return save(fig, path)

    monkeypatch.setattr(plot, "_save", keep)
    return seen


def test_plot_writes_labelled_pngs_and_a_dashboard(tmp_path, figures):
    _metrics(tmp_path)
    files = plot_run(tmp_path)
    names = {f.stem for f in files}
    assert {"reward", "rewards_by_function", "kl", "entropy", "clip_fraction", "zero_std_fraction",
            "completion_length", "loss", "grad_norm", "step_seconds", "dashboard"} <= names
    assert "eval_loss" not in names and "eval_accuracy" not in names      # no data, no plot
    for f in files:
        assert f.read_bytes()[:8] == PNG
    for name, axes in figures.items():
        for xlabel, ylabel, title in axes:
            assert xlabel and ylabel and title, (name, xlabel, ylabel, title)
    assert len(figures["dashboard.png"]) == len(files) - 1             # every panel on one page
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "p2")]) == 0
    assert len(list((tmp_path / "p2").glob("*.png"))) == len(files)


def test_total_reward_is_not_hidden_under_a_single_reward_function(tmp_path):
    rows = [{"step": 1, "reward_mean": 0.5, "reward/accuracy": 0.5}]
    total = plot.panel_lines(plot.PANELS[0], rows)
    per_fn = plot.panel_lines(plot.PANELS[1], rows)
    assert [ln[0] for ln in total] == ["total"] and [ln[0] for ln in per_fn] == ["accuracy"]


def test_kl_and_clipping_are_left_out_when_they_cannot_move(tmp_path):
    _metrics(tmp_path, kl=0.0, clip_low=0.0, clip_high=0.0)
    (tmp_path / "config.yaml").write_text("algorithm: {kl_coef: 0.0, num_iterations: 1}\n")
    names = {f.stem for f in plot_run(tmp_path)}
    assert "kl" not in names and "clip_fraction" not in names and "reward" in names
    (tmp_path / "config.yaml").write_text("algorithm: {kl_coef: 0.04, num_iterations: 2}\n")
    names = {f.stem for f in plot_run(tmp_path)}
    assert {"kl", "clip_fraction"} <= names                       # they can move: drawn, even at 0


def test_eval_accuracy_before_during_after(tmp_path, figures):
    _metrics(tmp_path, steps=4)
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 4}))
    _eval(tmp_path, "before", 0.17)
    _eval(tmp_path, "step2", 0.25, pass_at_k={"pass@4": 0.4})
    _eval(tmp_path, "after", 0.325)
    assert [(p["step"], p["pass1"]) for p in eval_points(tmp_path)] == [(0, 0.17), (2, 0.25), (4, 0.325)]
    files = {f.name for f in plot_run(tmp_path)}
    assert "eval_accuracy.png" in files
    (xlabel, ylabel, title), = figures["eval_accuracy.png"]
    assert "step" in xlabel and "accuracy" in ylabel and "0.170 -> 0.325" in title
    assert figures["dashboard.png"][0] == figures["eval_accuracy.png"][0]  # the headline comes first


def test_pipeline_dir_gets_accuracy_across_stages(tmp_path, figures):
    def stage(name, kind, summary, t):
        d = tmp_path / name
        d.mkdir()
        (d / "DONE").write_text(json.dumps({"stage": kind, "seconds": 1, "summary": summary}))
        os.utime(d / "DONE", (t, t))
        return d

    stage("eval_base", "eval", {"pass1": 0.02}, 100)
    grpo = stage("grpo", "grpo", {"eval_before": None, "eval_after": {"pass1": 0.04}}, 300)
    _metrics(grpo)
    stage("sft", "sft", {"first_loss": 1.0}, 200)
    assert stage_evals(tmp_path) == [("eval_base", 0.02), ("grpo (after)", 0.04)]
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "plots" / "eval_accuracy.png").read_bytes()[:8] == PNG
    assert (grpo / "plots" / "dashboard.png").is_file()
    (xlabel, ylabel, _), = figures["eval_accuracy.png"]
    assert "stage" in xlabel and "pass@1" in ylabel


def test_plot_rejects_non_run_dir(tmp_path):
    assert main(["plot", str(tmp_path)]) == 2


def test_reward_plot_draws_each_rewards_mean_not_its_counters():
    from grpo.plot import _keys

    rows = [{"step": 1, "reward/accuracy": 0.5, "reward/accuracy_std": 0.1, "reward/accuracy/none_frac": 0.2,
             "reward/accuracy/errors": 0.0, "reward/format": 1.0}]
    assert _keys(rows, "reward/*") == ["reward/accuracy", "reward/format"]

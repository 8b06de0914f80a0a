import json

from grpo.cli import main
from grpo.plot import plot_run


def test_plot_writes_pngs(tmp_path):
    rows = [{"step": s, "reward_mean": s / 10, "reward/accuracy": s / 20, "reward/accuracy_std": 0.1,
             "kl": 0.01 * s, "entropy": 1.0, "clip_low": 0.0, "clip_high": 0.1, "zero_std_frac": 0.5,
             "completion_len_mean": 10 + s, "completion_len_max": 20 + s, "loss": 1.0 / s} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = plot_run(tmp_path)
    names = {f.stem for f in files}
    assert {"reward", "kl", "entropy", "clip_fraction", "zero_std_fraction", "completion_length", "loss"} <= names
    assert "eval_loss" not in names                       # no data, no plot
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "p2")]) == 0
    assert len(list((tmp_path / "p2").glob("*.png"))) == len(files)


def test_plot_rejects_non_run_dir(tmp_path):
    assert main(["plot", str(tmp_path)]) == 2

"""Run outputs (issue #18): the output-directory policy of `grpo run` (refuse a finished run's directory
unless --resume / --overwrite; a file or unwritable place is an error), and progress output (silent with
run.progress: false, plain lines without carriage returns when stderr is not a terminal)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from grpo.cli import main
from grpo.testing import char_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny") / "model"
    tok = char_tokenizer()
    tiny_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _grpo(tmp_path: Path, model: Path, out: Path, **run) -> Path:
    tree = {
        "model": {"name": str(model)},
        "data": {"train": {"source": "arithmetic", "options": {"n": 8, "seed": 0, "difficulty": [1]}}},
        "rewards": ["accuracy"], "sampling": {"group_size": 2, "max_new_tokens": 4, "batch_size": 8},
        "optim": {"steps": 2, "prompts_per_step": 2, "micro_batch_size": 4, "lr": 1e-4},
        "eval": {"before": False, "after": False},
        "run": {"output_dir": str(out), "progress": False, "mixed_precision": "no", "save_every": 1, **run},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_rerun_is_refused_and_loses_nothing_then_overwrite_starts_over(tmp_path, tiny_dir, capsys):
    out = tmp_path / "run"
    recipe = _grpo(tmp_path, tiny_dir, out)
    assert main(["run", str(recipe)]) == 0
    assert _steps(out) == [1, 2]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    # a fresh run into it: one error, before any model loads, every file as it was (not steps 1, 2, 1, 2)
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --overwrite: the run's files are replaced; a file of the user's stays
    (out / "notes.txt").write_text("mine\n")
    (out / "checkpoints" / "step-7").mkdir()   # would be picked up by a later --resume if it stayed
    assert main(["run", str(recipe), "--overwrite"]) == 0
    assert _steps(out) == [1, 2]
    assert (out / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    # --resume of the finished run continues it (nothing left to do), without duplicating lines
    assert main(["run", str(recipe), "--resume"]) == 0
    assert _steps(out) == [1, 2]


def test_eval_stage_rerun_is_refused_and_overwrite_replaces_its_rows(tmp_path, tiny_dir, capsys):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(yaml.safe_dump({
        "stage": "eval", "model": {"name": str(tiny_dir)}, "rewards": ["accuracy"],
        "data": {"eval": {"source": "arithmetic", "options": {"n": 3, "seed": 1}}},
        "eval": {"max_new_tokens": 4}, "run": {"output_dir": str(tmp_path / "ev"), "progress": False}}))
    rows = tmp_path / "ev" / "eval_eval.jsonl"
    assert main(["eval", str(recipe)]) == 0
    assert len(rows.read_text().splitlines()) == 3
    assert main(["eval", str(recipe)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["eval", str(recipe), "--overwrite"]) == 0
    assert len(rows.read_text().splitlines()) == 3     # replaced, not appended


def test_output_dir_checks_create_nothing(tmp_path):
    from grpo.config import ConfigError
    from grpo.tracking import check_writable_dir, prepare_output_dir

    check_writable_dir(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_writable_dir(tmp_path / "f" / "run")
    with pytest.raises(ConfigError, match="cannot write to"):
        check_writable_dir("/proc/no-such-grpo-dir")
    with pytest.raises(ConfigError, match="contradict"):
        prepare_output_dir(tmp_path / "r", resume_from="latest", overwrite=True)


def test_only_the_main_process_refuses(tmp_path, monkeypatch):
    """The other processes of a launch never write into the run directory; rank 0 alone decides."""
    from grpo.config import ConfigError
    from grpo.tracking import prepare_output_dir

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_output_dir(tmp_path)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    prepare_output_dir(tmp_path)
    prepare_output_dir(tmp_path, overwrite=True)
    assert (tmp_path / "metrics.jsonl").is_file()      # rank 1 deletes nothing


# ---------------------------------------------------------------- progress

def test_progress_false_silences_every_bar(tmp_path, tiny_dir, capsys):
    """Weight loading (transformers), shard writing (save_pretrained) and our own bars: nothing on stderr."""
    assert main(["run", str(_grpo(tmp_path, tiny_dir, tmp_path / "quiet", progress=False))]) == 0
    err = capsys.readouterr().err
    for bar in ("Loading weights", "Writing model shards", "GRPO", "it/s", "\r"):
        assert bar not in err, err


def test_progress_without_a_terminal_writes_plain_lines(tmp_path, tiny_dir, capsys):
    """stderr is captured here, not a terminal: our bar becomes lines, the libraries' bars stay off."""
    assert main(["run", str(_grpo(tmp_path, tiny_dir, tmp_path / "logged", progress=True))]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "Loading weights" not in err and "Writing model shards" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("GRPO 2/2 [")], err


def test_line_progress_rate_limits_and_always_ends_with_a_line(monkeypatch):
    import io

    from grpo import tracking

    clock = {"t": 0.0}
    monkeypatch.setattr(tracking.time, "monotonic", lambda: clock["t"])
    out = io.StringIO()
    with tracking.LineProgress(10, "SFT", interval=30.0, file=out) as bar:
        for _ in range(10):
            clock["t"] += 10.0
            bar.update(1)
            bar.set_postfix(loss="0.5")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in out.getvalue()   # at 30, 60, 90 s and the close at 100 s
    assert lines[0].startswith("SFT 3/10 [00:30<01:10, 10.00s/it]") and lines[-1].startswith("SFT 10/10 [01:40<00:00")
    assert lines[-1].endswith("loss=0.5")


def test_progress_on_a_terminal_is_tqdm_and_library_bars_come_back(monkeypatch):
    from tqdm.std import tqdm as std_tqdm
    from transformers.utils import logging as hf_logging

    from grpo import tracking

    monkeypatch.setattr(tracking, "_saved_library_bars", None)
    hf_logging.enable_progress_bar()
    monkeypatch.setattr(tracking, "_interactive", lambda: True)
    assert isinstance(tracking.progress(3, "x", enabled=True), std_tqdm)
    tracking.configure_progress(False)
    assert not hf_logging.is_progress_bar_enabled()
    tracking.configure_progress(True)
    assert hf_logging.is_progress_bar_enabled()
    monkeypatch.setattr(tracking, "_interactive", lambda: False)
    assert isinstance(tracking.progress(3, "x", enabled=True), tracking.LineProgress)
    tracking.configure_progress(True)                  # a log file: the libraries' bars go off
    assert not hf_logging.is_progress_bar_enabled()

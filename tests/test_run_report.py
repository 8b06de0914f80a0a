"""What a GRPO run reports at its end: training time without the evals, where its outputs are, and
checkpoints with or without the optimizer state (run.save_optimizer)."""
import json
import logging
import time

import torch

from grpo import train as train_mod
from grpo.checkpoint import load_trainer_state
from grpo.config import load_config
from grpo.testing import tiny_model
from grpo.train import train


def cfg_for(tmp_path, steps=2, **run):
    return load_config(base={
        "data": {"train": {"source": "arithmetic", "options": {"n": 32, "seed": 0, "difficulty": [1]}},
                 "eval": {"source": "arithmetic", "options": {"n": 8, "seed": 1, "difficulty": [1]}},
                 "template": "plain"},
        "rewards": ["accuracy"],
        "sampling": {"group_size": 4, "max_new_tokens": 4},
        "optim": {"steps": steps, "prompts_per_step": 2, "micro_batch_size": 8},
        "eval": {"before": True, "after": True, "max_new_tokens": 4},
        "run": {"output_dir": str(tmp_path / "run"), "progress": False, "mixed_precision": "no", **run},
    })


def test_train_seconds_leave_out_the_evals(tmp_path, tok, monkeypatch):
    real = train_mod.evaluate

    def slow_eval(*a, **k):  # each eval takes 0.6 s longer than it would
        time.sleep(0.6)
        res = real(*a, **k)
        res.seconds += 0.6
        return res

    monkeypatch.setattr(train_mod, "evaluate", slow_eval)
    t0 = time.perf_counter()
    summary = train(cfg_for(tmp_path), model=tiny_model(tok), tokenizer=tok)
    wall = time.perf_counter() - t0
    run = tmp_path / "run"
    assert summary["eval_seconds"] == summary["eval_before"]["seconds"] + summary["eval_after"]["seconds"] >= 1.2
    assert 0 < summary["train_seconds"] <= wall - summary["eval_seconds"]
    assert json.loads((run / "summary.json").read_text())["eval_seconds"] == summary["eval_seconds"]


def test_closing_lines_say_where_everything_is(tmp_path, tok, capsys):
    train(cfg_for(tmp_path), model=tiny_model(tok), tokenizer=tok)
    out = capsys.readouterr().out
    tail = out[out.index("done: 2 steps"):]
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "completions.jsonl", "eval_*.json", "summary.json",
                 "checkpoints/step-2/", "model/ (", "trainer_state.pt (", f"grpo plot {run}", "dashboard.png"):
        assert name in tail, name
    assert tail.rstrip().splitlines()[-1].startswith(f"plots: grpo plot {run}")


def test_checkpoint_without_optimizer_state_is_smaller_and_resumes(tmp_path, tok, caplog):
    full = tmp_path / "full"
    train(cfg_for(full), model=tiny_model(tok), tokenizer=tok)
    lean = tmp_path / "lean"
    train(cfg_for(lean, save_optimizer=False), model=tiny_model(tok), tokenizer=tok)
    with_opt = load_trainer_state(full / "run" / "checkpoints" / "step-2")
    without = load_trainer_state(lean / "run" / "checkpoints" / "step-2")
    assert "optimizer" in with_opt and with_opt["optimizer"]["state"]
    assert "optimizer" not in without and {"step", "scheduler", "rng", "cursor"} <= set(without)
    size = lambda p: (p / "run" / "checkpoints" / "step-2" / "trainer_state.pt").stat().st_size  # noqa: E731
    params = sum(p.numel() for p in tiny_model(tok).parameters())
    assert size(full) - size(lean) >= 2 * 4 * params   # Adam's two fp32 moments per parameter

    # --resume from the lean checkpoint: weights, schedule and data position come back, moments start at zero
    cfg = cfg_for(lean, steps=3, save_optimizer=False)
    cfg.eval.before = cfg.eval.after = False
    with caplog.at_level(logging.WARNING, logger="grpo.train"):
        summary = train(cfg, resume_from="latest", model=tiny_model(tok), tokenizer=tok)
    assert summary["steps"] == 3
    assert "no optimizer state" in caplog.text
    steps = [json.loads(x)["step"] for x in (lean / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    resumed = load_trainer_state(lean / "run" / "checkpoints" / "step-3")
    assert "optimizer" not in resumed and resumed["step"] == 3
    assert torch.is_tensor(resumed["rng"]["torch"])

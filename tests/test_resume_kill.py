"""Kill a training run with SIGKILL mid-step, resume it with --resume, and check that metrics.jsonl and
the final weights equal those of an uninterrupted run.

The run: tiny random Llama saved to a directory (model.name is a path), 5 arithmetic prompts so the data
order wraps into a second epoch, warmup + linear LR decay, checkpoints every 2 steps. A reward plug-in
blocks forever at its 4th call when GRPO_TEST_HANG_AT=4 is set, so the kill lands mid-step 4 on every
machine: the checkpoint is step 2 and metrics.jsonl already has step 3, which the resume must drop and
recompute. Equality of every logged number (rewards, loss, grad norm, lr) and of every final weight,
bit for bit, shows that RNG, data order, optimizer and scheduler state were all restored.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from grpo import checkpoint as ckpt
from grpo.testing import char_tokenizer, tiny_model

REWARD = '''
import os, time
from pathlib import Path
_calls = 0

def length_parity(completions, **kw):
    global _calls
    _calls += 1
    hang = os.environ.get("GRPO_TEST_HANG_AT")
    if hang and _calls == int(hang):
        Path(os.environ["GRPO_TEST_HANG_FLAG"]).write_text("hanging")
        time.sleep(600)
    return [float(len(c[0]["content"]) % 3) for c in completions]
'''

TIMING = {"step_seconds", "gen_seconds", "gen_tokens_per_s", "reward_seconds", "update_seconds"}


def _recipe(root: Path) -> Path:
    tok = char_tokenizer()
    tiny_model(tok).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "reward.py").write_text(REWARD)
    recipe = {
        "model": {"name": str(root / "model")},
        "data": {"train": {"source": "arithmetic", "options": {"n": 5, "seed": 0, "difficulty": [1]}}},
        "rewards": [{"name": f"{root}/reward.py:length_parity"}],
        "sampling": {"group_size": 3, "max_new_tokens": 8, "temperature": 1.0},
        "algorithm": {"loss_type": "dapo", "num_iterations": 2},
        "optim": {"steps": 6, "prompts_per_step": 2, "micro_batch_size": 4, "lr": 3e-3, "warmup_steps": 2,
                  "schedule": "linear"},
        "eval": {"before": False, "after": False},
        "run": {"save_every": 2, "keep_last": 2, "progress": False, "mixed_precision": "no", "torch_threads": 1},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cmd(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "grpo", "run", str(recipe), "--set", f"run.output_dir={out}", *extra]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false")
    env.pop("GRPO_TEST_HANG_AT", None)
    env.update(extra)
    return env


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "step-6" / "model" / "model.safetensors"))


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    recipe = _recipe(tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    flag = tmp_path / "hanging"

    proc = subprocess.Popen(_cmd(recipe, killed), env=_env(GRPO_TEST_HANG_AT="4", GRPO_TEST_HANG_FLAG=str(flag)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not flag.exists():
            assert proc.poll() is None, f"run ended before the kill point:\n{proc.stderr.read()[-3000:]}"
            assert time.time() < deadline, "run did not reach step 4"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert [s for s, _ in ckpt.list_checkpoints(killed)] == [2]
    assert [r["step"] for r in _metrics(killed)] == [1, 2, 3]   # step 3 logged after the last checkpoint

    r = subprocess.run(_cmd(recipe, killed, "--resume"), env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout + r.stderr
    r = subprocess.run(_cmd(recipe, full), env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]

    want, got = _metrics(full), _metrics(killed)
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5, 6]
    assert got == want
    assert len({m["lr"] for m in want}) > 2            # the schedule really moves, so restoring it matters
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), f"{k} differs after resume"
    initial = tiny_model(char_tokenizer()).state_dict()
    assert any(not (a[k] == initial[k]).all() for k in a)   # training changed the weights

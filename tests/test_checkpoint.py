"""Crash safety of checkpoints: atomic write, what `latest_checkpoint` may pick, keep_last, compatibility."""
from __future__ import annotations

import pytest
import torch

from grpo import checkpoint as ckpt
from grpo.testing import char_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def _save(run, step, model, tok, keep_last=2):
    return ckpt.save_checkpoint(run, step, model, tok, {"step": step, "rng": ckpt.rng_state()}, "x: 1\n",
                                keep_last=keep_last)


def test_leftover_temp_and_incomplete_dirs_are_never_picked(tmp_path, tok):
    model = tiny_model(tok)
    good = _save(tmp_path, 2, model, tok)
    root = tmp_path / "checkpoints"
    # a crash mid-write leaves a temp dir of a later step, and a hand-copied dir without trainer_state.pt
    (root / ".tmp-step-5-abc123" / "model").mkdir(parents=True)
    torch.save({"step": 5}, root / ".tmp-step-5-abc123" / ckpt.STATE_FILE)
    (root / "step-4" / "model").mkdir(parents=True)
    (root / "step-notanumber").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2]
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.load_trainer_state(root / "step-4")


def test_failed_write_leaves_no_checkpoint_and_no_temp_dir(tmp_path, tok, monkeypatch):
    model = tiny_model(tok)
    _save(tmp_path, 1, model, tok)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2, model, tok)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-1"]
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-1"


def test_stale_temp_dirs_of_a_crashed_save_are_removed_at_the_next_save_and_resume(tmp_path, tok):
    """A save killed mid-write leaves `.tmp-step-<N>-<pid>-*`; the next save (and a resume) removes ours
    once their writer has ended, and nothing else (issue #18: they were never cleaned up)."""
    import os
    import subprocess
    import sys

    from grpo.tracking import prepare_output_dir

    model = tiny_model(tok)
    _save(tmp_path, 1, model, tok)
    root = tmp_path / "checkpoints"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    crashed = root / f".tmp-step-2-{dead}-k3x9_abc"       # its writer has exited
    older = root / ".tmp-step-2-abc123"                    # named before the pid was in the name
    live = root / f".tmp-step-2-{os.getppid()}-live0001"   # a writer that is still running: kept
    others = [root / ".tmp-notes", root / "my-step-2-copy"]   # not ours: kept
    for d in (crashed, older, live, *others):
        (d / "model").mkdir(parents=True)
    _save(tmp_path, 2, model, tok)
    assert not crashed.exists() and not older.exists()
    assert live.is_dir() and all(d.is_dir() for d in others)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 2]
    # a resume removes them too (before any model loads)
    (crashed / "model").mkdir(parents=True)
    prepare_output_dir(tmp_path, resume_from="latest")
    assert not crashed.exists() and live.is_dir()


def test_keep_last(tmp_path, tok):
    model = tiny_model(tok)
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, model, tok, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 5]
    _save(tmp_path, 6, model, tok, keep_last=1)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_checkpoint_roundtrip_weights_and_rng(tmp_path, tok):
    model = tiny_model(tok, seed=1)
    torch.manual_seed(123)
    path = _save(tmp_path, 3, model, tok)
    expected = torch.rand(4)
    other = tiny_model(tok, seed=2)
    assert not torch.equal(other.model.embed_tokens.weight, model.model.embed_tokens.weight)
    ckpt.load_model_weights(path, other)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    torch.manual_seed(0)
    ckpt.set_rng_state(ckpt.load_trainer_state(path)["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_checkpoint_of_a_different_model_is_refused(tmp_path, tok):
    path = _save(tmp_path, 1, tiny_model(tok), tok)
    bigger = tiny_model(tok, hidden_size=32, intermediate_size=64, num_attention_heads=2, head_dim=16)
    with pytest.raises(ckpt.CheckpointError, match="different model: .* has shape"):
        ckpt.load_model_weights(path, bigger)
    deeper = tiny_model(tok, num_hidden_layers=1)
    with pytest.raises(ckpt.CheckpointError, match="different model: unknown weight"):
        ckpt.load_model_weights(path, deeper)


# ---------------------------------------------------------------- NaN/inf never reaches a checkpoint

def _nan_cfg(tmp_path, rewards):
    from grpo.config import load_config

    return load_config(base={
        "data": {"train": {"source": "arithmetic", "options": {"n": 8, "seed": 0, "difficulty": [1]}}},
        "rewards": rewards, "sampling": {"group_size": 2, "max_new_tokens": 4},
        "optim": {"steps": 3, "prompts_per_step": 2, "micro_batch_size": 4, "lr": 1e-3},
        "eval": {"before": False, "after": False},
        "run": {"output_dir": str(tmp_path / "run"), "save_every": 1, "progress": False, "mixed_precision": "no"}})


def test_nan_loss_stops_naming_the_step_and_writes_no_checkpoint(tmp_path, tok, monkeypatch):
    import grpo.train as train_mod
    from grpo.rewards import registry
    from grpo.train import train

    model = tiny_model(tok)
    steps = {"n": 0}
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    sample = train_mod.sample

    def counting_sample(*a, **k):  # one sampling call per step, before its update
        steps["n"] += 1
        return sample(*a, **k)

    monkeypatch.setattr(train_mod, "sample", counting_sample)

    @registry.register_reward("count_steps")
    def count_steps(completions, **kw):
        return [float(i % 2) for i in range(len(completions))]

    def poison(module, args, output):  # NaN logits in the update forward of step 2 only (not while sampling)
        return output * float("nan") if torch.is_grad_enabled() and steps["n"] == 2 else output

    model.lm_head.register_forward_hook(poison)
    with pytest.raises(FloatingPointError, match=r"step 2: non-finite loss .*no checkpoint written"):
        train(_nan_cfg(tmp_path, ["count_steps"]), model=model, tokenizer=tok)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [1]
    assert all(torch.isfinite(p).all() for p in model.parameters())   # the NaN update was never applied


@pytest.mark.parametrize("fused", [False, True])
def test_nan_gradient_stops(tmp_path, tok, monkeypatch, fused):
    """Unfused: the host reads the norm before the step. Fused AdamW (as on CUDA; torch has it on CPU too):
    the step is queued with the norm's finiteness as its found_inf input, so it skips its update on the
    device, and the host stops after it: no weight may change either way."""
    import grpo.train as train_mod
    from grpo.train import train

    monkeypatch.setattr(train_mod, "_fused_optimizer", lambda: fused)
    model = tiny_model(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.model.norm.weight.register_hook(lambda g: g * float("nan"))
    when = "skipped its update on the device" if fused else "before the optimizer step"
    with pytest.raises(FloatingPointError, match=rf"step 1: non-finite gradients .*{when}"):
        train(_nan_cfg(tmp_path, ["accuracy"]), model=model, tokenizer=tok)
    assert ckpt.list_checkpoints(tmp_path / "run") == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nan_or_inf_reward_stops_unless_on_error_none(tmp_path, tok, monkeypatch):
    """NaN or inf from a reward is an error naming the reward and the sample (issue 19: NaN used to become
    None silently); with on_error: none those samples score None (counted) and training goes on."""
    from grpo.rewards import registry
    from grpo.train import train

    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    registry.register_reward("half_nan")(lambda completions, **kw: [float("nan") if i % 2 else 1.0
                                                                   for i in range(len(completions))])
    registry.register_reward("some_inf")(lambda completions, **kw: [float("inf")] + [0.0] * (len(completions) - 1))
    with pytest.raises(registry.RewardError, match=r"step 1: reward 'half_nan' returned NaN for sample 1"):
        train(_nan_cfg(tmp_path / "n", ["half_nan"]), model=tiny_model(tok), tokenizer=tok)
    summary = train(_nan_cfg(tmp_path / "a", [{"name": "half_nan", "on_error": "none"}]), model=tiny_model(tok),
                    tokenizer=tok)
    assert summary["steps"] == 3
    with pytest.raises(registry.RewardError, match=r"step 1: reward 'some_inf' returned inf for sample 0"):
        train(_nan_cfg(tmp_path / "b", ["some_inf"]), model=tiny_model(tok), tokenizer=tok)
    assert ckpt.list_checkpoints(tmp_path / "b" / "run") == []

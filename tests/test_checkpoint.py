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

import json

import pytest

from grpo.data import DataError

from grpo.data.records import Example
from grpo.rejection import accepted, run_rejection, select
from grpo.stages import build_stage
from grpo.rewards.registry import RewardTable


def test_accepted_needs_every_applicable_reward():
    t = RewardTable(names=["accuracy", "format", "language_consistency"], weights=[1, 1, 1],
                    values=[[1.0, 1.0, 0.97], [1.0, 0.0, 1.0], [None, 1.0, 1.0], [None, None, None], [1.0, 1.0, 0.5]])
    assert [accepted(t, i, {}) for i in range(5)] == [True, False, True, False, False]
    assert accepted(t, 1, {"format": 0.0})


def test_select_dedups_and_caps():
    exs = [Example("a", "x", "p1"), Example("b", "x", "p2")]
    texts = ["s1", " s1 ", "s2", "s3", "t1", "t2"]
    kept = select(exs, texts, [0, 0, 0, 0, 1, 1], [True, True, False, True, False, True], max_per_prompt=2)
    assert kept == {0: [0, 3], 1: [5]}


def test_rejection_stage_keeps_only_verified(tmp_path):
    from grpo.testing import char_tokenizer, tiny_model

    tok = char_tokenizer()
    cfg = build_stage("rejection_sampling", {
        "data": {"train": {"source": "arithmetic", "options": {"n": 3, "seed": 0, "difficulty": [1]}}},
        "rewards": ["accuracy", "format"], "accept": {"accuracy": 0.0, "format": 0.0}, "keep_truncated": True,
        "sampling": {"group_size": 4, "max_new_tokens": 6}, "max_per_prompt": 2,
        "run": {"output_dir": str(tmp_path), "progress": False}})
    s = run_rejection(cfg, model=tiny_model(tok), tokenizer=tok)
    rows = [json.loads(x) for x in (tmp_path / "data.jsonl").read_text().splitlines()]
    assert s["kept"] == len(rows) > 0
    per_prompt = {}
    for r in rows:
        per_prompt.setdefault(r["prompt"], []).append(r["completion"])
        assert set(r["rewards"]) == {"accuracy", "format"} and r["provenance"]["seed"] == 0
    assert all(len(v) <= 2 and len(set(v)) == len(v) for v in per_prompt.values())
    rep = json.loads((tmp_path / "acceptance.json").read_text())
    assert rep["per_task"]["arithmetic"]["samples"] == 12
    # strict thresholds: a random model is never correct, so nothing is kept
    strict = build_stage("rejection_sampling", {"data": {"train": {"source": "arithmetic",
                         "options": {"n": 3, "seed": 0, "difficulty": [1]}}}, "rewards": ["accuracy"],
                         "keep_truncated": True, "sampling": {"group_size": 4, "max_new_tokens": 6},
                         "run": {"output_dir": str(tmp_path / "strict"), "progress": False}})
    with pytest.raises(DataError, match="kept no samples"):
        run_rejection(strict, model=tiny_model(tok), tokenizer=tok)
    assert json.loads((tmp_path / "strict" / "acceptance.json").read_text())["acceptance_rate"] == 0.0


def test_rejection_stage_uses_the_configured_backend(tmp_path, monkeypatch):
    from grpo import rejection
    from grpo.engine import EngineSampler
    from grpo.testing import char_tokenizer, tiny_model

    made = []
    real = rejection.make_sampler
    monkeypatch.setattr(rejection, "make_sampler", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    tok = char_tokenizer()
    cfg = build_stage("rejection_sampling", {
        "data": {"train": {"source": "arithmetic", "options": {"n": 3, "seed": 0, "difficulty": [1]}}},
        "rewards": ["accuracy"], "accept": {"accuracy": 0.0}, "keep_truncated": True,
        "sampling": {"backend": "engine", "group_size": 4, "max_new_tokens": 6}, "max_per_prompt": 2,
        "run": {"output_dir": str(tmp_path), "progress": False}})
    assert run_rejection(cfg, model=tiny_model(tok), tokenizer=tok)["kept"] > 0
    assert len(made) == 1 and isinstance(made[0], EngineSampler)

import math

import pytest
import torch

from grpo.distill import (divergence, forward_kl, generalized_jsd, layers_to_keep, masked_mean, reverse_kl,
                          student_from_teacher)

LOG = torch.log


def test_kl_hand_values():
    t = LOG(torch.tensor([0.5, 0.5]))          # P
    s = LOG(torch.tensor([0.25, 0.75]))        # Q
    fwd = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    rev = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert forward_kl(t, s).item() == pytest.approx(fwd, abs=1e-6)
    assert reverse_kl(t, s).item() == pytest.approx(rev, abs=1e-6)
    m = [0.375, 0.625]
    jsd = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) \
        + 0.5 * (0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1]))
    assert generalized_jsd(t, s, beta=0.5).item() == pytest.approx(jsd, abs=1e-6)
    # temperature 2 on logits: P' = softmax(t/2), scaled by tau^2 = 4
    p2, q2 = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)
    assert forward_kl(t, s, 2.0).item() == pytest.approx(4 * float((p2 * (p2 / q2).log()).sum()), abs=1e-6)


def test_disjoint_supports_and_identity():
    t = torch.tensor([0.0, -float("inf")])
    s = torch.tensor([-float("inf"), 0.0])
    assert generalized_jsd(t, s).item() == pytest.approx(math.log(2), abs=1e-6)   # the JSD upper bound
    x = torch.randn(3, 4, 11)
    for kind in ("forward", "reverse", "jsd"):
        assert divergence(kind, x, x).abs().max().item() < 1e-6
        assert (divergence(kind, x, torch.randn(3, 4, 11)) > 0).all()
    assert divergence("forward", x, x).shape == (3, 4)


def test_masked_mean():
    per = torch.tensor([[1.0, 2.0, 100.0]])
    assert masked_mean(per, torch.tensor([[1.0, 1.0, 0.0]])).item() == pytest.approx(1.5)


def test_layer_dropped_student_runs_and_learns_towards_teacher():
    from grpo.distill import logit_loss_fn
    from grpo.testing import char_tokenizer, tiny_model

    tok = char_tokenizer()
    teacher = tiny_model(tok, num_hidden_layers=4)
    student = student_from_teacher(teacher, {"keep_every": 2})
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert len(teacher.model.layers) == 4
    assert layers_to_keep(4, {"keep_layers": [0, 3]}) == [0, 3]
    ids = torch.tensor([tok("12+3=15")["input_ids"]])
    out = student.generate(ids, max_new_tokens=3, do_sample=False)     # KV cache works with renumbered layers
    assert out.shape[1] == ids.shape[1] + 3
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.cat([torch.full((1, 3), -100), ids[:, 3:]], 1)}
    loss_fn = logit_loss_fn(teacher, "forward", 0.5, 1.0)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        s, n = loss_fn(student, batch)
        loss = s / n
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("mode", ["logit", "sequence"])
def test_distill_stage_writes_smaller_student(tmp_path, mode):
    from grpo.distill import run_distill
    from grpo.models import load_model
    from grpo.stages import build_stage
    from grpo.testing import char_tokenizer, tiny_model

    tok = char_tokenizer()
    cfg = build_stage("distill", {
        "mode": mode, "student": {"from_teacher": {"keep_every": 2}}, "loss": {"kind": "jsd"},
        "data": {"train": {"source": "arithmetic", "options": {"n": 2, "seed": 0, "difficulty": [1]}}},
        "rewards": ["format"], "sampling": {"group_size": 2, "max_new_tokens": 6},
        "optim": {"steps": 2, "batch_size": 2, "micro_batch_size": 2},
        "run": {"output_dir": str(tmp_path), "progress": False, "mixed_precision": "no"}})
    teacher = tiny_model(tok, num_hidden_layers=4)
    if mode == "sequence":   # a random teacher is never well-formed: its samples are all rejected
        with pytest.raises(Exception, match="no usable samples"):
            run_distill(cfg, model=teacher, tokenizer=tok)
        return
    s = run_distill(cfg, model=teacher, tokenizer=tok)
    assert s["student_layers"] == 2 and s["teacher_samples"] > 0
    assert load_model(s["model"]).config.num_hidden_layers == 2


def test_distill_ce_baseline_and_heldout_nll(tmp_path):
    """loss.kind ce is the teacher-free baseline: same student init and rows as a divergence run, so the
    held-out NLL before training matches; data.eval adds the teacher's and the student's held-out NLL."""
    from grpo.distill import run_distill
    from grpo.stages import build_stage
    from grpo.testing import char_tokenizer, tiny_model

    tok = char_tokenizer()
    teacher = tiny_model(tok, num_hidden_layers=4)
    out = {}
    for kind in ("forward", "ce"):
        cfg = build_stage("distill", {
            "text": "data", "student": {"from_teacher": {"keep_every": 2}}, "loss": {"kind": kind},
            "data": {"train": {"source": "cold_start", "options": {"dataset": "arithmetic", "n": 4, "seed": 0,
                                                                     "difficulty": [1]}},
                     "eval": {"source": "cold_start", "options": {"dataset": "arithmetic", "n": 2, "seed": 9,
                                                                    "difficulty": [1]}},
                     "max_seq_len": 512},
            "optim": {"steps": 2, "batch_size": 2, "micro_batch_size": 2, "lr": 1e-3},
            "run": {"output_dir": str(tmp_path / kind), "progress": False, "mixed_precision": "no"}})
        out[kind] = run_distill(cfg, model=teacher, tokenizer=tok)
    f, c = out["forward"], out["ce"]
    assert f["student_layers"] == c["student_layers"] == 2
    assert f["eval_loss_before"] == pytest.approx(c["eval_loss_before"], rel=1e-6)   # same init, CE on eval
    assert f["teacher_eval_loss"] == pytest.approx(c["teacher_eval_loss"], rel=1e-6)
    assert c["eval_loss_after"] < c["eval_loss_before"]
    assert f["eval_loss_after"] != pytest.approx(c["eval_loss_after"])              # the losses differ


def test_distill_loss_kind_validated():
    from grpo.config import ConfigError
    from grpo.stages import build_stage

    build_stage("distill", {"student": {"from_teacher": {"keep_every": 2}}, "loss": {"kind": "ce"}})
    with pytest.raises(ConfigError, match="loss.kind"):
        build_stage("distill", {"student": {"from_teacher": {"keep_every": 2}}, "loss": {"kind": "mse"}})

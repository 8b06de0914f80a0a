"""Distillation of a teacher into a (smaller) student that shares its tokenizer.

mode "sequence" (DeepSeek-R1's distilled models): the teacher samples completions, the verifiers keep
the correct ones (grpo.rejection), the student is fine-tuned on them with the SFT loss (grpo.sft).

mode "logit": the student matches the teacher's next-token distribution on completion tokens of
prompt + text, where text is a teacher sample (on-policy for the teacher, unverified) or the data's own
completion. Per token, with P = softmax(teacher_logits / tau), Q = softmax(student_logits / tau):
  forward  KL(P || Q) = sum_v P (log P - log Q)      mean-seeking (Hinton et al. 2015)
  reverse  KL(Q || P) = sum_v Q (log Q - log P)      mode-seeking (MiniLLM, Gu et al. 2024)
  jsd      beta KL(P || M) + (1 - beta) KL(Q || M),  M = beta P + (1 - beta) Q
           (generalised JSD of GKD, Agarwal et al. 2024; beta = 0.5 is the symmetric JSD, bounded by ln 2)
each multiplied by tau^2 so gradient scale does not depend on tau; averaged over completion tokens.

loss.kind "ce" is the teacher-free baseline: plain next-token cross-entropy on the same text (what the
`sft` stage does), with the student built and the data ordered exactly as for the divergences, so the two
runs differ only in the loss. With `data.eval` set, every kind reports the held-out token NLL
(cross-entropy of the eval completions) of the student before and after training and of the teacher.

A student may be built from the teacher by dropping decoder layers (`student.from_teacher: {keep_every:
2}` keeps layers 0, 2, 4, ...; or `{keep_layers: [0, 3]}`), a common initialisation for small students.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch

from grpo.config import ConfigError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- divergences (pure functions)

def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, with 0 log 0 = 0. logp, logq: (..., V) -> (...)."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def forward_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(P_teacher || Q_student) per position: (..., V) -> (...)."""
    t = torch.log_softmax(teacher_logits / temperature, dim=-1)
    s = torch.log_softmax(student_logits / temperature, dim=-1)
    return _kl(t, s) * temperature ** 2


def reverse_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(Q_student || P_teacher) per position."""
    t = torch.log_softmax(teacher_logits / temperature, dim=-1)
    s = torch.log_softmax(student_logits / temperature, dim=-1)
    return _kl(s, t) * temperature ** 2


def generalized_jsd(teacher_logits: torch.Tensor, student_logits: torch.Tensor, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """beta KL(P || M) + (1 - beta) KL(Q || M) with M = beta P + (1 - beta) Q, per position."""
    t = torch.log_softmax(teacher_logits / temperature, dim=-1)
    s = torch.log_softmax(student_logits / temperature, dim=-1)
    if beta == 0.0 or beta == 1.0:   # M collapses onto one side: the divergence is 0
        return torch.zeros(t.shape[:-1], dtype=t.dtype, device=t.device)
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
    return (beta * _kl(t, m) + (1 - beta) * _kl(s, m)) * temperature ** 2


def divergence(kind: str, teacher_logits: torch.Tensor, student_logits: torch.Tensor, beta: float = 0.5,
               temperature: float = 1.0) -> torch.Tensor:
    if kind == "forward":
        return forward_kl(teacher_logits, student_logits, temperature)
    if kind == "reverse":
        return reverse_kl(teacher_logits, student_logits, temperature)
    if kind == "jsd":
        return generalized_jsd(teacher_logits, student_logits, beta, temperature)
    raise ValueError(f"unknown divergence '{kind}'; known: forward, reverse, jsd")


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


# ---------------------------------------------------------------- students

def _decoder_layers(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(f"student.from_teacher: cannot find decoder layers (model.model.layers) in "
                          f"{type(model).__name__}; give student.name instead")
    return inner, layers


def layers_to_keep(num_layers: int, spec: dict[str, Any]) -> list[int]:
    if "keep_layers" in spec:
        keep = sorted(int(i) for i in spec["keep_layers"])
        if not keep or keep[0] < 0 or keep[-1] >= num_layers or len(set(keep)) != len(keep):
            raise ConfigError(f"student.from_teacher.keep_layers: need distinct indices in [0, {num_layers}), got {keep}")
        return keep
    every = int(spec.get("keep_every", 2))
    if every < 1:
        raise ConfigError(f"student.from_teacher.keep_every: must be >= 1, got {every}")
    return list(range(0, num_layers, every))


def student_from_teacher(teacher, spec: dict[str, Any]):
    """A copy of `teacher` with only the selected decoder layers (embeddings and head kept)."""
    student = copy.deepcopy(teacher)
    inner, layers = _decoder_layers(student)
    keep = layers_to_keep(len(layers), spec)
    inner.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(inner.layers):       # KV-cache slots are indexed by layer_idx
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx
    cfg = student.config
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)
    for p in student.parameters():
        p.requires_grad_(True)
    return student


# ---------------------------------------------------------------- the stage

def logit_loss_fn(teacher, kind: str, beta: float, temperature: float):
    """A `grpo.sft.fit` loss: summed divergence over completion tokens, and their count."""
    from grpo.sft import completion_targets

    def loss_fn(model, batch):
        ids, am = batch["input_ids"], batch["attention_mask"]
        s_logits = model(input_ids=ids, attention_mask=am).logits[:, :-1]   # (B, L-1, V)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=am).logits[:, :-1]
        _, mask = completion_targets(batch["labels"])
        per_tok = divergence(kind, t_logits.float(), s_logits.float(), beta, temperature)  # (B, L-1)
        return (per_tok * mask).sum(), float(mask.sum())

    return loss_fn


def run_distill(cfg, model=None, tokenizer=None) -> dict[str, Any]:
    """The `distill` stage. `model`/`tokenizer` (tests) stand for the teacher and its tokenizer."""
    import yaml

    from grpo.data.records import Example
    from grpo.config import to_dict
    from grpo.models import load_for_inference, load_model, load_tokenizer
    from grpo.rejection import sample_and_filter
    from grpo.rollout import check_prompts
    from grpo.sft import ce_loss_sum, eval_loss, fit, load_sft_examples, rows_for, save_model
    from grpo.tracking import RunWriter
    from grpo.rewards.registry import load_rewards

    if not cfg.student.name and not cfg.student.from_teacher:
        raise ConfigError("student: give name (a model sharing the teacher's tokenizer) or from_teacher: {keep_every: 2}")
    d = cfg.data
    rewards = load_rewards(cfg.rewards)
    if cfg.mode == "logit" and cfg.text == "data":
        examples = load_sft_examples([d.train, *d.mix], d.completion_key)
    else:
        t = d.train
        examples = t.load()
    torch.manual_seed(cfg.run.seed)
    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    samples = not (cfg.mode == "logit" and cfg.text == "data")  # the teacher samples the training text
    if samples:
        tokenizer = tokenizer or load_tokenizer(cfg.teacher.name)
        check_prompts(cfg.teacher, model, tokenizer, examples, d, cfg.sampling.max_new_tokens, "data.train")
    teacher, tokenizer = load_for_inference(cfg.teacher, model, tokenizer)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if cfg.student.from_teacher:
        student = student_from_teacher(teacher, cfg.student.from_teacher)
    else:
        student = load_model(cfg.student.name)
        if student.config.vocab_size != teacher.config.vocab_size:
            raise ConfigError(f"student {cfg.student.name} has vocab size {student.config.vocab_size}, the teacher "
                              f"{teacher.config.vocab_size}: distillation needs a shared tokenizer")
    out = Path(cfg.run.output_dir)
    writer = RunWriter(out)
    cfg_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    (out / "config.yaml").write_text(cfg_yaml)
    summary: dict[str, Any] = {"mode": cfg.mode, "teacher_layers": teacher.config.num_hidden_layers,
                               "student_layers": student.config.num_hidden_layers}
    if samples:
        rows, report = sample_and_filter(teacher, tokenizer, examples, rewards, d.template, d.assistant_prefix,
                                         cfg.sampling, {}, cfg.max_per_prompt, keep_truncated=cfg.mode == "logit",
                                         provenance={"teacher": cfg.teacher.name, "seed": cfg.run.seed},
                                         verify=cfg.mode == "sequence", max_prompt_tokens=d.max_prompt_tokens)
        writer.write_json("acceptance.json", report)
        writer.append("teacher_samples.jsonl", rows)
        if not rows:
            raise ConfigError(f"distill: the teacher produced no usable samples (see {out / 'acceptance.json'})")
        examples = [Example(id=r["id"], task=r["task"], prompt=r["prompt"], answer=r["answer"],
                            meta={d.completion_key: r["completion"]}) for r in rows]
        summary["teacher_samples"] = len(rows)
    train_rows = rows_for(tokenizer, examples, d)
    eval_rows = None
    if d.eval is not None:
        eval_rows = rows_for(tokenizer, load_sft_examples([d.eval], d.completion_key), d)
        device = next(teacher.parameters()).device
        summary["teacher_eval_loss"] = eval_loss(teacher, eval_rows, tokenizer.pad_token_id,
                                                 cfg.optim.micro_batch_size, device)
    if cfg.mode == "sequence" or cfg.loss.kind == "ce":
        loss_fn = ce_loss_sum
    else:
        loss_fn = logit_loss_fn(teacher, cfg.loss.kind, cfg.loss.beta, cfg.loss.temperature)
    student, fit_summary = fit(student, tokenizer, train_rows, cfg.optim, cfg.run, writer, eval_rows=eval_rows,
                               eval_every=cfg.eval_every, loss_fn=loss_fn, desc=f"distill ({cfg.mode})",
                               eval_loss_fn=ce_loss_sum)
    summary.update(fit_summary)
    summary["model"] = str(save_model(student, tokenizer, out / "model", cfg_yaml))
    writer.write_json("summary.json", summary)
    return summary

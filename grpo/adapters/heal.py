"""Healing a converted model by logit distillation from the original dense model, and perplexity.

Loss per token t (teacher p = softmax(z_T), student q = softmax(z_S), temperature 1, full vocab):
    forward KD  KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)   (mean-seeking; MHA2MLA heals with plain LM
                                                           loss, logit KD is the stronger signal here)
    reverse KD  KL(q ‖ p) = Σ_v q_v (log q_v − log p_v)   (mode-seeking, as in MiniLLM)
averaged over the non-padding tokens. Texts are packed into blocks of `seq_len` tokens separated by
EOS (no padding). AdamW, linear warm-up over 5% of the steps then cosine decay to 10%, grad-norm
clip 1.0, bf16 autocast on CUDA. The R1 pipeline's full distillation stage lives elsewhere; this is
the small loop the adapters need.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class HealStats:
    """losses: KD loss per step; tokens: trained tokens; seconds: wall time of the loop."""

    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0


def pack_texts(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate tokenized texts (EOS between them) and cut into [N, seq_len] blocks."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"texts hold {len(ids)} tokens, fewer than one block of seq_len={seq_len}")
    return torch.tensor(ids[:n * seq_len]).view(n, seq_len)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
            kd: str = "forward") -> torch.Tensor:
    """Mean per-token KL. logits [B, T, V] (any float dtype, computed in fp32), mask [B, T] 1/0."""
    ls = F.log_softmax(student_logits.float(), dim=-1)
    lt = F.log_softmax(teacher_logits.float(), dim=-1)
    if kd == "forward":
        per_tok = (lt.exp() * (lt - ls)).sum(-1)
    elif kd == "reverse":
        per_tok = (ls.exp() * (ls - lt)).sum(-1)
    else:
        raise ValueError(f"kd must be 'forward' or 'reverse', got {kd!r}")
    if mask is None:
        return per_tok.mean()
    mask = mask.float()
    return (per_tok * mask).sum() / mask.sum().clamp_min(1.0)


def _lr_at(step: int, steps: int, lr: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return lr * (step + 1) / warm
    frac = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def heal(student, teacher, tokenizer, texts: list[str], steps: int, lr: float = 1e-4, batch_size: int = 8,
         seq_len: int = 256, kd: str = "forward", time_budget_s: float | None = None, log_every: int = 0,
         seed: int = 0, after_step=None) -> HealStats:
    """Distil `teacher` into `student` (all student parameters train) on packed `texts`.
    after_step(student) runs after every optimizer step (e.g. `grpo.adapters.after_optimizer_step`)."""
    device = next(student.parameters()).device
    blocks = pack_texts(tokenizer, texts, seq_len)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(blocks), generator=gen)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    teacher.eval()
    student.train()
    stats, t0, cursor = HealStats(), time.time(), 0
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[order[cursor:cursor + batch_size]].to(device)
        cursor += batch_size
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr)
        with autocast:
            with torch.no_grad():
                t_logits = teacher(batch).logits
            s_logits = student(batch).logits
        loss = kd_loss(s_logits, t_logits, kd=kd)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after_step is not None:
            after_step(student)
        stats.losses.append(loss.item())
        stats.tokens += batch.numel()
        stats.steps = step + 1
        if log_every and step % log_every == 0:
            print(f"heal step {step} kd={stats.losses[-1]:.4f} lr={opt.param_groups[0]['lr']:.2e}", flush=True)
        if time_budget_s is not None and time.time() - t0 > time_budget_s:
            break
    student.eval()
    stats.seconds = time.time() - t0
    return stats


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], seq_len: int = 512, batch_size: int = 16) -> float:
    """exp(mean NLL over all predicted tokens), each text on its own (truncated to seq_len)."""
    device = next(model.parameters()).device
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    nll, count = 0.0, 0
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:seq_len] for t in texts]
    encoded = [e for e in encoded if len(e) >= 2]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i:i + batch_size]
        width = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, e in enumerate(chunk):  # right padding
            ids[j, :len(e)] = torch.tensor(e)
            mask[j, :len(e)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with autocast:
            logits = model(ids, attention_mask=mask).logits[:, :-1]
        lp = F.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        m = mask[:, 1:].float()
        nll -= float((lp * m).sum())
        count += int(m.sum())
    return math.exp(nll / max(count, 1))


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False

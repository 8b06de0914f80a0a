"""Supervised fine-tuning (DeepSeek-R1 cold start and the SFT stage after rejection sampling).

Loss: next-token cross-entropy on completion tokens only (prompt tokens are labelled -100), averaged
over all completion tokens of one optimizer step (token-level mean across micro-batches, so gradient
accumulation does not change the loss). The prompt is rendered by `grpo.data.templates` exactly as GRPO
renders it, so a model fine-tuned here sees the same input format in the next GRPO stage; the target is
`Example.meta[completion_key]` (cold_start data, or a prompt/completion jsonl such as rejection sampling
writes) followed by the tokenizer's EOS token.

Packing (optional) concatenates tokenised examples into rows of up to `max_seq_len` tokens to avoid
padding; attention is not masked between packed examples (cheap, and what most SFT recipes do).

`fit` is the loop (also used by logit-level distillation with another loss); `run_sft` is the stage.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from grpo.data import DataError
from grpo.data.records import Example
from grpo.data.templates import render, to_messages
from grpo.checkpoint import atomic_dir
from grpo.tracking import RunWriter, progress

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class TokenRow:
    """One training sequence: input_ids [L] and labels [L] (IGNORE on prompt tokens)."""

    input_ids: list[int]
    labels: list[int]
    prompt_cut: int = 0       # prompt tokens dropped on the left (data.max_prompt_tokens)


# ---------------------------------------------------------------- data

def load_sft_examples(datasets, completion_key: str = "completion") -> list[Example]:
    """Examples of every dataset config (concatenated; no dedup by prompt: one prompt may have several
    targets) that carry a target in meta[completion_key]. Raises DataError before any model loads."""
    out: list[Example] = []
    for d in datasets:
        exs = d.load(dedup=d.options.get("dedup", False))  # one prompt may have several targets
        missing = [e.id for e in exs if not isinstance(e.meta.get(completion_key), str) or not e.meta[completion_key]]
        if missing:
            raise DataError(f"SFT data '{d.source}' ({d.options}): {len(missing)} of {len(exs)} examples have no "
                            f"'{completion_key}' target (first: {missing[0]}); use the cold_start source or a file "
                            f"with a '{completion_key}' column mapped via columns: {{{completion_key}: <column>}}")
        out.extend(exs)
    return out


def tokenize(tokenizer, example: Example, template: str, assistant_prefix: str, completion_key: str,
             max_seq_len: int, max_prompt_tokens: int | None = None) -> TokenRow:
    prompt = render(tokenizer, to_messages(example, template), assistant_prefix)
    target = example.meta[completion_key]
    if assistant_prefix and target.startswith(assistant_prefix):
        target = target[len(assistant_prefix):]       # the prefix is already at the end of the prompt
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    cut = max(0, len(p) - max_prompt_tokens) if max_prompt_tokens is not None else 0
    p = p[cut:]                                        # left-truncated, as the sampling stages do
    c = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p + c)[:max_seq_len]
    labels = ([IGNORE] * len(p) + c)[:max_seq_len]
    return TokenRow(ids, labels, cut)


def pack_rows(rows: list[TokenRow], max_seq_len: int) -> list[TokenRow]:
    """Greedy concatenation of rows (in order) into rows of at most max_seq_len tokens."""
    out: list[TokenRow] = []
    cur = TokenRow([], [])
    for r in rows:
        if cur.input_ids and len(cur.input_ids) + len(r.input_ids) > max_seq_len:
            out.append(cur)
            cur = TokenRow([], [])
        cur = TokenRow(cur.input_ids + r.input_ids, cur.labels + r.labels)
    if cur.input_ids:
        out.append(cur)
    return out


def collate(rows: list[TokenRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels, each [B, L]."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    am = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        am[i, :n] = 1
        labels[i, :n] = torch.tensor(r.labels)
    return {"input_ids": ids, "attention_mask": am, "labels": labels}


def completion_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels [B, L] -> (targets [B, L-1] for logits[:, :-1], mask [B, L-1] float of completion tokens)."""
    tgt = labels[:, 1:]
    mask = (tgt != IGNORE).float()
    return tgt.clamp(min=0), mask


def ce_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Summed cross-entropy over completion tokens, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]  # (B, L-1, V)
    tgt, mask = completion_targets(batch["labels"])
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    return (nll * mask.reshape(-1)).sum(), float(mask.sum())


# ---------------------------------------------------------------- the loop

LossFn = Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, float]]


def _steps(n_rows: int, optim) -> int:
    per_epoch = math.ceil(n_rows / optim.batch_size)
    return optim.steps if optim.steps > 0 else optim.epochs * per_epoch


@torch.no_grad()
def eval_loss(model, rows: list[TokenRow], pad_id: int, micro: int, device, loss_fn: LossFn = ce_loss_sum) -> float:
    was = model.training
    model.eval()
    total, tokens = 0.0, 0.0
    for i in range(0, len(rows), micro):
        s, n = loss_fn(model, {k: v.to(device) for k, v in collate(rows[i:i + micro], pad_id).items()})
        total, tokens = total + float(s), tokens + n
    model.train(was)
    return total / max(tokens, 1.0)


def fit(model, tokenizer, rows: list[TokenRow], optim, run, writer: RunWriter, eval_rows: list[TokenRow] | None = None,
        eval_every: int = 0, loss_fn: LossFn = ce_loss_sum, desc: str = "SFT",
        eval_loss_fn: LossFn | None = None) -> tuple[Any, dict[str, Any]]:
    """Optimise `model` on `rows` with `loss_fn`; logs metrics.jsonl; returns (unwrapped model, summary).
    `eval_rows` are scored with `eval_loss_fn` (default: `loss_fn`)."""
    from accelerate import Accelerator

    from grpo.train import make_scheduler, resolve_precision

    if not rows:
        raise DataError("SFT: no training rows")
    eval_loss_fn = eval_loss_fn or loss_fn
    torch.manual_seed(run.seed)
    acc = Accelerator(mixed_precision=resolve_precision(run.mixed_precision))
    total = _steps(len(rows), optim)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=optim.lr,
                            betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    # make_scheduler reads optim.steps/warmup_steps/schedule and algorithm.num_iterations
    sched = make_scheduler(opt, SimpleNamespace(optim=SimpleNamespace(steps=total, warmup_steps=optim.warmup_steps,
                                                                      schedule=optim.schedule),
                                                algorithm=SimpleNamespace(num_iterations=1)))
    model, opt, sched = acc.prepare(model, opt, sched)
    model.train()
    pad = tokenizer.pad_token_id
    rng = random.Random(run.seed)
    order: list[int] = []
    summary: dict[str, Any] = {"steps": total, "rows": len(rows)}
    if eval_rows:
        summary["eval_loss_before"] = eval_loss(model, eval_rows, pad, optim.micro_batch_size, acc.device, eval_loss_fn)
        writer.log_metrics({"step": 0, "eval_loss": summary["eval_loss_before"]}, step=0)
    t0 = time.perf_counter()
    bar = progress(total, desc, enabled=run.progress)
    for step in range(1, total + 1):
        while len(order) < optim.batch_size:
            epoch = list(range(len(rows)))
            rng.shuffle(epoch)
            order.extend(epoch)
        picked, order = [rows[i] for i in order[:optim.batch_size]], order[optim.batch_size:]
        n_tok = float(sum(sum(x != IGNORE for x in r.labels[1:]) for r in picked))
        loss_total = 0.0
        for i in range(0, len(picked), optim.micro_batch_size):
            batch = {k: v.to(acc.device) for k, v in collate(picked[i:i + optim.micro_batch_size], pad).items()}
            with acc.autocast():
                s, _ = loss_fn(model, batch)
            loss = s / max(n_tok, 1.0)
            acc.backward(loss)
            loss_total += float(loss.detach())
        grad_norm = float(acc.clip_grad_norm_(model.parameters(), optim.max_grad_norm))
        if not math.isfinite(loss_total) or not math.isfinite(grad_norm):
            raise FloatingPointError(f"{desc} step {step}: non-finite loss {loss_total} or grad norm {grad_norm}")
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        row = {"step": step, "loss": loss_total, "grad_norm": grad_norm, "lr": sched.get_last_lr()[0],
               "tokens": n_tok, "elapsed_s": time.perf_counter() - t0}
        if eval_rows and eval_every and step % eval_every == 0 and step < total:
            row["eval_loss"] = eval_loss(model, eval_rows, pad, optim.micro_batch_size, acc.device, eval_loss_fn)
        writer.log_metrics(row, step=step)
        summary.setdefault("first_loss", loss_total)
        summary["last_loss"] = loss_total
        bar.update(1)
        bar.set_postfix(loss=f"{loss_total:.3f}")
    bar.close()
    if eval_rows:
        summary["eval_loss_after"] = eval_loss(model, eval_rows, pad, optim.micro_batch_size, acc.device, eval_loss_fn)
        writer.log_metrics({"step": total, "eval_loss": summary["eval_loss_after"]}, step=total)
    summary["train_seconds"] = time.perf_counter() - t0
    return acc.unwrap_model(model, keep_fp32_wrapper=False), summary


def save_model(model, tokenizer, out_dir: str | Path, config_yaml: str | None = None) -> Path:
    """save_pretrained + tokenizer (+ the stage config) at out_dir, atomically; loadable by load_model."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if config_yaml is not None:
            (tmp / "stage_config.yaml").write_text(config_yaml)
    return out_dir


def rows_for(tokenizer, examples: list[Example], data_cfg) -> list[TokenRow]:
    rows = [tokenize(tokenizer, e, data_cfg.template, data_cfg.assistant_prefix, data_cfg.completion_key,
                     data_cfg.max_seq_len, data_cfg.max_prompt_tokens) for e in examples]
    cut = sum(r.prompt_cut > 0 for r in rows)
    if cut:
        log.warning("%d of %d prompts are longer than data.max_prompt_tokens = %d tokens: they are left-truncated "
                    "to it", cut, len(rows), data_cfg.max_prompt_tokens)
    return pack_rows(rows, data_cfg.max_seq_len) if data_cfg.packing else rows


def run_sft(cfg, model=None, tokenizer=None) -> dict[str, Any]:
    """The `sft` stage: data checks first, then the model; writes <output_dir>/model and summary.json."""
    import yaml

    from grpo.config import to_dict
    from grpo.models import compile_blocks, load_model, load_tokenizer

    d = cfg.data
    train = load_sft_examples([d.train, *d.mix], d.completion_key)
    held = load_sft_examples([d.eval], d.completion_key) if d.eval is not None else None
    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    tokenizer = tokenizer or load_tokenizer(cfg.model.name)
    model = model or load_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.model.compile:
        compile_blocks(model)
    out = Path(cfg.run.output_dir)
    writer = RunWriter(out)
    cfg_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    (out / "config.yaml").write_text(cfg_yaml)
    rows = rows_for(tokenizer, train, d)
    eval_rows = rows_for(tokenizer, held, d) if held else None
    log.info("SFT on %d examples (%d rows) from %s", len(train), len(rows), cfg.model.name)
    model, summary = fit(model, tokenizer, rows, cfg.optim, cfg.run, writer, eval_rows, cfg.eval_every)
    summary["model"] = str(save_model(model, tokenizer, out / "model", cfg_yaml))
    summary["examples"] = len(train)
    writer.write_json("summary.json", summary)
    return summary

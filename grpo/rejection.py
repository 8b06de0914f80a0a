"""Rejection sampling (DeepSeek-R1 stage 3): sample k completions per prompt from a checkpoint, keep
the verified ones, write them as an SFT dataset.

A completion is kept when it did not hit max_new_tokens (unless keep_truncated), at least one reward
could score it (not all None), and every listed reward that applies (not None) reaches its threshold
(`accept`, default 1.0; 0.95 for language_consistency, which returns a fraction). Kept completions are
deduplicated per prompt (whitespace-normalised text) and capped at `max_per_prompt`.

Output in the stage's output_dir:
  data.jsonl       {id, task, prompt, answer, completion, rewards, provenance: {checkpoint, seed, sample}}
  acceptance.json  acceptance rates overall and per task
The next SFT stage reads data.jsonl with the `file` source (columns: {prompt: prompt, answer: answer,
completion: completion}).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from grpo.data import DataError
from grpo.data.records import Example
from grpo.rollout import SamplingParams, check_prompts, encode_prompts, make_sampler
from grpo.scoring import score_rollout
from grpo.tracking import RunWriter
from grpo.rewards.registry import RewardTable, load_rewards

log = logging.getLogger(__name__)
DEFAULT_THRESHOLDS = {"language_consistency": 0.95}


def accepted(table: RewardTable, row: int, thresholds: dict[str, float]) -> bool:
    """Row passes when some reward applies and every applicable reward reaches its threshold."""
    vals = dict(zip(table.names, table.values[row]))
    applicable = {k: v for k, v in vals.items() if v is not None}
    if not applicable:
        return False
    return all(v >= thresholds.get(k, DEFAULT_THRESHOLDS.get(k, 1.0)) for k, v in applicable.items())


def select(examples: list[Example], texts: list[str], group: list[int], ok: list[bool], max_per_prompt: int
           ) -> dict[int, list[int]]:
    """Example index -> kept row indices: accepted rows, deduplicated per prompt, at most max_per_prompt."""
    kept: dict[int, list[int]] = {}
    seen: dict[int, set[str]] = {}
    for i, (g, good) in enumerate(zip(group, ok)):
        if not good:
            continue
        key = " ".join(texts[i].split())
        if key in seen.setdefault(g, set()) or len(kept.get(g, [])) >= max_per_prompt:
            continue
        seen[g].add(key)
        kept.setdefault(g, []).append(i)
    return kept


def acceptance_report(examples: list[Example], group: list[int], ok: list[bool], kept: dict[int, list[int]]
                      ) -> dict[str, Any]:
    per: dict[str, dict[str, float]] = {}
    for i, g in enumerate(group):
        t = per.setdefault(examples[g].task, {"prompts": 0, "samples": 0, "accepted": 0, "kept": 0,
                                              "prompts_with_kept": 0})
        t["samples"] += 1
        t["accepted"] += int(ok[i])
    for g, ex in enumerate(examples):
        t = per[ex.task] if ex.task in per else per.setdefault(ex.task, {"prompts": 0, "samples": 0, "accepted": 0,
                                                                          "kept": 0, "prompts_with_kept": 0})
        t["prompts"] += 1
        t["kept"] += len(kept.get(g, []))
        t["prompts_with_kept"] += int(bool(kept.get(g)))
    for t in per.values():
        t["acceptance_rate"] = t["accepted"] / max(t["samples"], 1)
    n = sum(t["samples"] for t in per.values())
    return {"acceptance_rate": sum(t["accepted"] for t in per.values()) / max(n, 1), "samples": n,
            "kept": sum(t["kept"] for t in per.values()), "per_task": per}


def sample_and_filter(model, tokenizer, examples: list[Example], rewards, template: str, assistant_prefix: str,
                      sampling, thresholds: dict[str, float], max_per_prompt: int, keep_truncated: bool,
                      provenance: dict[str, Any], verify: bool = True, max_prompt_tokens: int | None = None
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample, verify (skipped when verify=False: every untruncated sample passes), select; prompts longer
    than max_prompt_tokens are left-truncated (`check_prompts` has said how many).
    Returns (dataset rows, acceptance report)."""
    sampler = make_sampler(sampling.backend, model, tokenizer, sampling.batch_size)
    params = SamplingParams(max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                            top_p=sampling.top_p, top_k=sampling.top_k)
    k = sampling.group_size
    per_call = max(1, sampling.batch_size // k)
    records, group_all, ok_all, texts_all = [], [], [], []
    for s in range(0, len(examples), per_call):
        part = examples[s:s + per_call]
        chats, ids = encode_prompts(tokenizer, part, template, assistant_prefix, max_prompt_tokens)
        with torch.no_grad():
            rb = sampler.generate(ids, k, params)
        table = score_rollout(rewards, part, chats, rb, assistant_prefix, template)
        for i, g in enumerate(rb.group.tolist()):
            good = (not verify or accepted(table, i, thresholds)) and (keep_truncated or not bool(rb.truncated[i]))
            group_all.append(s + g)
            ok_all.append(good)
            texts_all.append(assistant_prefix + rb.texts[i])
            records.append(dict(zip(table.names, table.values[i])))
    kept = select(examples, texts_all, group_all, ok_all, max_per_prompt)
    rows = []
    for g in sorted(kept):
        ex = examples[g]
        for i in kept[g]:
            rows.append({"id": f"{ex.id}-s{i - g * k}", "task": ex.task, "prompt": ex.prompt, "answer": ex.answer,
                         "completion": texts_all[i], "rewards": records[i],
                         "provenance": {**provenance, "sample": i - g * k}})
    return rows, acceptance_report(examples, group_all, ok_all, kept)


def run_rejection(cfg, model=None, tokenizer=None) -> dict[str, Any]:
    """The `rejection_sampling` stage."""
    from grpo.models import load_for_inference, load_tokenizer

    rewards = load_rewards(cfg.rewards)
    d = cfg.data
    examples = d.train.load()
    torch.manual_seed(cfg.run.seed)
    tokenizer = tokenizer or load_tokenizer(cfg.model.name)
    check_prompts(cfg.model, model, tokenizer, examples, d, cfg.sampling.max_new_tokens, "data.train")
    model, tokenizer = load_for_inference(cfg.model, model, tokenizer)
    provenance = {"checkpoint": cfg.model.name, "seed": cfg.run.seed}
    rows, report = sample_and_filter(model, tokenizer, examples, rewards, d.template, d.assistant_prefix,
                                     cfg.sampling, cfg.accept, cfg.max_per_prompt, cfg.keep_truncated, provenance,
                                     max_prompt_tokens=d.max_prompt_tokens)
    out = Path(cfg.run.output_dir)
    writer = RunWriter(out)
    (out / "data.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    writer.write_json("acceptance.json", report)
    log.info("rejection sampling: kept %d of %d samples (acceptance %.3f)", len(rows), report["samples"],
             report["acceptance_rate"])
    if not rows:
        raise DataError(f"rejection sampling kept no samples (acceptance rate 0 over {report['samples']} samples); "
                        f"see {out / 'acceptance.json'}")
    summary = {"data": str(out / "data.jsonl"), "kept": len(rows), "acceptance_rate": report["acceptance_rate"]}
    writer.write_json("summary.json", summary)
    return summary

"""Evaluation: greedy pass@1 and sampled pass@k (unbiased estimator) on held-out Examples.

A sample is correct when the reward named by `eval.metric` (default "accuracy") gives it >= 1.0. Each
evaluation writes ``eval_<tag>.jsonl`` (per-sample outputs) and ``eval_<tag>.json`` (summary).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from grpo.data.records import Example
from grpo.algorithms import pass_at_k
from grpo.rollout import SamplingParams, encode_prompts
from grpo.scoring import score_rollout
from grpo.tracking import RunWriter
from grpo.rewards.registry import LoadedReward, RewardSpec, load_rewards


@dataclass
class EvalResult:
    tag: str
    num_examples: int
    pass1: float                      # greedy
    pass_at_k: dict[str, float] = field(default_factory=dict)   # sampled, "pass@k" -> value
    reward_means: dict[str, float] = field(default_factory=dict)
    completion_len_mean: float = 0.0
    seconds: float = 0.0


def _metric_reward(rewards: list[LoadedReward], metric: str) -> list[LoadedReward]:
    if any(r.label == metric for r in rewards):
        return rewards
    return rewards + load_rewards([RewardSpec(metric)])


def evaluate(model, tokenizer, sampler, examples: list[Example], rewards: list[LoadedReward], eval_cfg,
             template: str, assistant_prefix: str = "", tag: str = "eval", writer: RunWriter | None = None,
             progress: bool = True, max_prompt_tokens: int | None = None) -> EvalResult:
    t0 = time.perf_counter()
    rewards = _metric_reward(rewards, eval_cfg.metric)
    chats, prompt_ids = encode_prompts(tokenizer, examples, template, assistant_prefix, max_prompt_tokens)
    greedy = SamplingParams(max_new_tokens=eval_cfg.max_new_tokens, temperature=0.0)
    rows, correct1, lengths = [], [], []
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        rb = _generate(sampler, prompt_ids, 1, greedy, eval_cfg.batch_size, progress, f"eval {tag} (greedy)")
        table = score_rollout(rewards, examples, chats, rb, assistant_prefix, template)
    metric_col = table.column(eval_cfg.metric)
    for i, ex in enumerate(examples):
        ok = (metric_col[i] or 0.0) >= 1.0
        correct1.append(ok)
        lengths.append(float(rb.completion_mask[i].sum()))
        scores = dict(zip(table.names, table.values[i]))
        for k, v in scores.items():
            if v is not None:
                sums.setdefault(k, []).append(v)
        rows.append({"id": ex.id, "prompt": ex.prompt, "answer": ex.answer, "completion": rb.texts[i],
                     "correct": ok, "rewards": scores, "truncated": bool(rb.truncated[i])})
    result = EvalResult(tag=tag, num_examples=len(examples), pass1=sum(correct1) / len(examples),
                        reward_means={k: sum(v) / len(v) for k, v in sums.items()},
                        completion_len_mean=sum(lengths) / len(lengths))
    n = eval_cfg.num_samples
    if n > 1:
        sampled = SamplingParams(max_new_tokens=eval_cfg.max_new_tokens, temperature=eval_cfg.temperature)
        with torch.no_grad():
            rb = _generate(sampler, prompt_ids, n, sampled, eval_cfg.batch_size, progress, f"eval {tag} (pass@{n})")
            col = score_rollout(rewards, examples, chats, rb, assistant_prefix, template).column(eval_cfg.metric)
        counts = [sum((col[i * n + j] or 0.0) >= 1.0 for j in range(n)) for i in range(len(examples))]
        ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, n) if k <= n})
        result.pass_at_k = {f"pass@{k}": sum(pass_at_k(n, c, k) for c in counts) / len(counts) for k in ks}
        for i, c in enumerate(counts):
            rows[i]["sampled_correct"] = c
    result.seconds = time.perf_counter() - t0
    if writer is not None:
        writer.append(f"eval_{tag}.jsonl", rows)
        writer.write_json(f"eval_{tag}.json", asdict(result))
    return result


def _generate(sampler, prompt_ids, group_size, params, batch_size, progress, desc):
    """Sample in chunks of prompts with a progress bar; returns one RolloutBatch for all."""
    from grpo.tracking import progress as bar
    from grpo.rollout import RolloutBatch, _pad_right

    per_call = max(1, batch_size // group_size)
    parts = []
    with bar(len(prompt_ids), desc, enabled=progress) as pb:
        for s in range(0, len(prompt_ids), per_call):
            parts.append(sampler.generate(prompt_ids[s:s + per_call], group_size, params))
            pb.update(len(prompt_ids[s:s + per_call]))
    width = max(p.completion_ids.shape[1] for p in parts)
    pad = getattr(sampler, "pad_id", 0)
    offset, groups = 0, []
    for p in parts:
        groups.append(p.group + offset)
        offset += int(p.group.max()) + 1
    return RolloutBatch(prompt_ids=[x for p in parts for x in p.prompt_ids],
                        completion_ids=torch.cat([_pad_right(p.completion_ids, width, pad) for p in parts]),
                        completion_mask=torch.cat([_pad_right(p.completion_mask, width, 0) for p in parts]),
                        logprobs=None, texts=[t for p in parts for t in p.texts],
                        group=torch.cat(groups), truncated=torch.cat([p.truncated for p in parts]))

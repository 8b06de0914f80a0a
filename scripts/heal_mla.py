"""Convert SmolLM2-135M-Instruct to MLA, heal it by logit distillation, and measure the cost.

For the original, the converted (unhealed) and the healed model it reports: KV-cache bytes per token
(bf16, from `cache_bytes_per_token`, i.e. the tensors the absorbed decode path allocates), held-out
perplexity on GSM8K test text, and greedy accuracy on held-out arithmetic tasks (HF generate; for the
healed model also through `mla_generate`, the latent-cache path). Healing data: GSM8K train text plus
the teacher's own greedy answers to generated arithmetic tasks (disjoint seed from the held-out set).

    # H100, about 5 minutes (time budget caps healing):
    python scripts/heal_mla.py --gsm8k-dir /path/to/gsm8k --out runs/heal_mla
    # CPU smoke test on a tiny random model, seconds:
    python scripts/heal_mla.py --tiny --out /tmp/heal_tiny
    # CPU: conversion cost only (no healing, no generation)
    python scripts/heal_mla.py --gsm8k-dir ... --steps 0 --arith 0 --eval-texts 100

Writes <out>/results.json (and the healed checkpoint with --save).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.data.arithmetic import generate as arithmetic_tasks  # noqa: E402
from grpo.data.templates import render, to_messages  # noqa: E402
from grpo.adapters import (adapter_metrics, after_optimizer_step, apply_adapters,  # noqa: E402
                           cache_bytes_per_token, mla_generate, mla_layers)
from grpo.adapters.heal import heal, pack_texts, perplexity  # noqa: E402
from grpo.models import load_model, load_tokenizer, tiny_llama  # noqa: E402
from grpo.rewards.math import accuracy_reward  # noqa: E402


def gsm8k_texts(path: Path, n: int) -> list[str]:
    out = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            out.append(f"Question: {row['question']}\nAnswer: {row['answer']}")
            if len(out) >= n:
                break
    return out


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, use_mla: bool, batch_size: int = 64):
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else (eos if eos is not None else tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    texts = []
    for i in range(0, len(prompts), batch_size):
        enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[i:i + batch_size]]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, e in enumerate(enc):  # left padding
            ids[j, width - len(e):] = torch.tensor(e)
            mask[j, width - len(e):] = 1
        ids, mask = ids.to(device), mask.to(device)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                          enabled=False)
        with ctx:
            if use_mla:
                out = mla_generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=eos)
            else:
                out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad, eos_token_id=eos)
        texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


def arithmetic_accuracy(model, tokenizer, tasks, prompts, max_new_tokens, use_mla=False) -> float:
    completions = greedy(model, tokenizer, prompts, max_new_tokens, use_mla)
    scores = accuracy_reward(prompts, completions, answer=[t.answer for t in tasks])
    return sum(s or 0.0 for s in scores) / max(len(scores), 1)


def measure(name, model, tokenizer, eval_texts, tasks, prompts, args, results, use_mla=False):
    t0 = time.time()
    row = {"kv_bytes_per_token_bf16": cache_bytes_per_token(model, torch.bfloat16)}
    if eval_texts:
        row["gsm8k_test_ppl"] = perplexity(model, tokenizer, eval_texts, seq_len=args.seq_len,
                                           batch_size=args.batch_size)
    if tasks:
        row["arith_acc"] = arithmetic_accuracy(model, tokenizer, tasks, prompts, args.max_new_tokens)
        if use_mla:
            row["arith_acc_latent_cache"] = arithmetic_accuracy(model, tokenizer, tasks, prompts,
                                                                args.max_new_tokens, use_mla=True)
    row["seconds"] = round(time.time() - t0, 1)
    results[name] = row
    print(name, json.dumps(row), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--gsm8k-dir", type=Path, default=None, help="folder with train.jsonl and test.jsonl")
    ap.add_argument("--out", type=Path, default=Path("runs/heal_mla"))
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--rope-dims", type=int, default=8, help="rotary dims kept per KV head")
    ap.add_argument("--rope-selection", default="rotation", choices=["norm", "rotation", "fixed"])
    ap.add_argument("--calib-blocks", type=int, default=32, help="calibration blocks of --seq-len tokens")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--time-budget", type=float, default=180.0, help="seconds of healing at most")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--kd", default="forward", choices=["forward", "reverse"])
    ap.add_argument("--train-texts", type=int, default=7473)
    ap.add_argument("--eval-texts", type=int, default=500)
    ap.add_argument("--gen-tasks", type=int, default=1024, help="teacher answers to arithmetic tasks to distil on")
    ap.add_argument("--arith", type=int, default=300, help="held-out arithmetic tasks for accuracy (0 = skip)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--tiny", action="store_true", help="tiny random model, tiny settings (CPU smoke test)")
    ap.add_argument("--save", action="store_true", help="save the healed checkpoint under <out>/healed")
    ap.add_argument("--moe", default=None, metavar="E:K:S",
                    help="also convert MLPs to DeepSeekMoE (routed:top_k:shared), balanced during healing")
    ap.add_argument("--no-mla", action="store_true", help="MoE only (needs --moe)")
    ap.add_argument("--skip-original", action="store_true", help="do not evaluate the original (ablations)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.rank, args.rope_dims, args.steps, args.batch_size, args.seq_len = 8, 4, 5, 2, 64
        args.calib_blocks, args.train_texts, args.eval_texts = 2, 64, 8
        args.gen_tasks, args.arith, args.max_new_tokens = 4, 4, 8

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    teacher = tiny_llama(len(tokenizer)) if args.tiny else load_model(args.model)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    if args.gsm8k_dir is not None:
        train_texts = gsm8k_texts(args.gsm8k_dir / "train.jsonl", args.train_texts)
        eval_texts = gsm8k_texts(args.gsm8k_dir / "test.jsonl", args.eval_texts)
    else:
        train_texts = [f"Question: What is {a} + {b}?\nAnswer: {a + b}" for a in range(40) for b in range(40)]
        train_texts = train_texts[:args.train_texts]
        eval_texts = [f"Question: What is {a} * {b}?\nAnswer: {a * b}" for a in range(7, 9) for b in range(20)]
        eval_texts = eval_texts[:args.eval_texts]

    def prompts_of(tasks):
        return [render(tokenizer, to_messages(t, "plain")) for t in tasks]

    held_tasks = arithmetic_tasks(args.arith, seed=12345) if args.arith else []
    held_prompts = prompts_of(held_tasks)
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "device": str(device)}

    if not args.skip_original:
        measure("original", teacher, tokenizer, eval_texts, held_tasks, held_prompts, args, results)

    # teacher's own answers to generated tasks: distillation data in the format the eval uses
    gen_texts = []
    if args.gen_tasks:
        t0 = time.time()
        gen = arithmetic_tasks(args.gen_tasks, seed=7)
        prompts = prompts_of(gen)
        gen_texts = [p + c for p, c in zip(prompts, greedy(teacher, tokenizer, prompts, args.max_new_tokens,
                                                           False))]
        results["gen_tasks_seconds"] = round(time.time() - t0, 1)

    calib = pack_texts(tokenizer, train_texts, args.seq_len)[:args.calib_blocks].to(device)
    student = copy.deepcopy(teacher)
    t0 = time.time()
    adapter = {} if args.no_mla else {"mla": {"rank": args.rank, "rope_dims": args.rope_dims,
                                              "rope_selection": args.rope_selection}}
    if args.moe:
        e, k, sh = (int(x) for x in args.moe.split(":"))
        adapter["moe"] = {"num_experts": e, "top_k": k, "num_shared": sh}
    apply_adapters(student, adapter, calibration_ids=calib)
    results["convert_seconds"] = round(time.time() - t0, 1)
    measure("converted", student, tokenizer, eval_texts, held_tasks, held_prompts, args, results)

    if args.steps:
        for p in student.parameters():
            p.requires_grad_(True)
        corpus = train_texts + gen_texts
        stats = heal(student, teacher, tokenizer, corpus, steps=args.steps, lr=args.lr,
                     batch_size=args.batch_size, seq_len=args.seq_len, kd=args.kd,
                     time_budget_s=args.time_budget, log_every=100, after_step=after_optimizer_step)
        results["heal_adapter_metrics"] = adapter_metrics(student)
        results["heal"] = {"steps": stats.steps, "tokens": stats.tokens, "seconds": round(stats.seconds, 1),
                           "kd_first": stats.losses[0], "kd_last": stats.losses[-1]}
        print("heal", json.dumps(results["heal"]), flush=True)
        measure("healed", student, tokenizer, eval_texts, held_tasks, held_prompts, args, results,
                use_mla=bool(mla_layers(student)))

    results["kv_ratio"] = (results["converted"]["kv_bytes_per_token_bf16"]
                           / cache_bytes_per_token(teacher, torch.bfloat16))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    if args.save and args.steps:
        student.save_pretrained(args.out / "healed")
        tokenizer.save_pretrained(args.out / "healed")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

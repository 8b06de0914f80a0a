"""How far a DeepSeekMoE conversion moves SmolLM2-135M-Instruct from the dense model at initialisation.

For each "E:k:S" setting (routed experts : top-k : shared experts) it reports the max |Δlogit| against
the dense model on held-out text and the held-out perplexity. top_k == E is the exact configuration.

    python tools/moe_deviation.py --gsm8k-dir /path/to/gsm8k --settings 8:8:1 8:2:1 16:4:1
    python tools/moe_deviation.py --tiny          # seconds on CPU
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.adapters import apply_adapters  # noqa: E402
from grpo.adapters.heal import perplexity  # noqa: E402
from grpo.models import load_model, load_tokenizer, tiny_llama  # noqa: E402
from scripts.heal_mla import gsm8k_texts  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--gsm8k-dir", type=Path, default=None)
    ap.add_argument("--settings", nargs="+", default=["8:8:1", "8:2:1", "16:4:1"])
    ap.add_argument("--eval-texts", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.model)
    dense = (tiny_llama(len(tokenizer)) if args.tiny else load_model(args.model)).to(device).eval()
    if args.gsm8k_dir is not None:
        texts = gsm8k_texts(args.gsm8k_dir / "test.jsonl", args.eval_texts)
    else:
        texts = [f"Question: What is {a} * {b}?\nAnswer: {a * b}" for a in range(3, 9) for b in range(20)]
        texts = texts[:args.eval_texts]
    probe = tokenizer(texts[0], return_tensors="pt")["input_ids"][:, :args.seq_len].to(device)
    with torch.no_grad():
        ref = dense(probe).logits
    results = {"dense": {"ppl": perplexity(dense, tokenizer, texts, seq_len=args.seq_len, batch_size=8)}}
    print("dense", results["dense"], flush=True)
    for s in args.settings:
        e, k, sh = (int(x) for x in s.split(":"))
        moe = apply_adapters(copy.deepcopy(dense), {"moe": {"num_experts": e, "top_k": k, "num_shared": sh}})
        with torch.no_grad():
            diff = float((moe(probe).logits - ref).abs().max())
        row = {"max_abs_logit_diff": diff, "ppl": perplexity(moe, tokenizer, texts, seq_len=args.seq_len,
                                                             batch_size=8)}
        results[s] = row
        print(s, row, flush=True)
        del moe
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "moe_deviation.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

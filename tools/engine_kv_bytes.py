"""KV-cache bytes per token reported by the rollout engine itself, original vs MLA-converted model.

Converts with the MLA config scripts/heal_mla.py uses by default (rank 64, 8 rotary dims per KV head,
"rotation" selection; weight-only, no calibration or healing: the cache layout does not depend on
them), builds an EngineSampler on each model and reads `kv_bytes_per_token` (the engine's own cache
tensors, in its dtype). With --decode it also greedy-decodes a few chat prompts through the engine on
the converted model and compares the tokens with `mla_generate` (the adapter's latent-cache loop).

    GRPO_CACHE=/tmp/grpocache python tools/engine_kv_bytes.py --decode
    python tools/engine_kv_bytes.py --model <gguf> --decode --device cuda --throughput   # GPU: CUDA graphs

On CUDA the engine captures its decode step in CUDA graphs (and compiles its small ops); --throughput
then also times 16 prompts x 8 samples x 256 tokens (std-step's rollout) on both models in bf16.
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

from grpo.adapters import apply_adapters, mla_generate  # noqa: E402
from grpo.engine import EngineSampler  # noqa: E402
from grpo.models import load_model, load_tokenizer  # noqa: E402
from grpo.rollout import SamplingParams  # noqa: E402

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--rope-dims", type=int, default=8)
    ap.add_argument("--rope-selection", default="rotation")
    ap.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES), help="engine dtype for the bytes")
    ap.add_argument("--decode", action="store_true", help="also decode through the engine on the MLA model")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--throughput", action="store_true", help="time a std-step-sized rollout on both models")
    args = ap.parse_args(argv)
    dtype = _DTYPES[args.dtype]
    tok = load_tokenizer(args.model)
    dense = load_model(args.model).to(args.device)
    mla = apply_adapters(copy.deepcopy(dense), {"mla": {"rank": args.rank, "rope_dims": args.rope_dims,
                                                        "rope_selection": args.rope_selection}})
    res = {"model": args.model, "engine_dtype": args.dtype,
           "mla": {"rank": args.rank, "rope_dims": args.rope_dims, "rope_selection": args.rope_selection}}
    for name, model in (("original", dense), ("mla", mla)):
        eng = EngineSampler(model, tok, max_batch=8, max_seq_len=512, dtype=dtype)
        res[f"{name}_kv_bytes_per_token"] = eng.kv_bytes_per_token
        res[f"{name}_attention"] = type(eng.decoder.attn[0]).__name__
    res["ratio"] = res["mla_kv_bytes_per_token"] / res["original_kv_bytes_per_token"]
    if args.decode:
        prompts = ["What is 12 + 35?", "Name a prime number larger than 10.", "Write one word: hello"]
        ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False) for p in prompts]
        ids = [list(i["input_ids"]) if isinstance(i, dict) or hasattr(i, "keys") else list(i) for i in ids]
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
        t0 = time.perf_counter()
        out = EngineSampler(mla, tok, max_batch=8, max_seq_len=512, dtype=torch.float32).generate(ids, 1, params)
        res["decode_fp32_s"] = round(time.perf_counter() - t0, 2)
        width = max(len(i) for i in ids)
        pad = tok.pad_token_id
        batch = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=args.device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=args.device)
        eos = next(iter(EngineSampler(mla, tok).eos_ids))
        ref = mla_generate(mla.eval(), batch, mask, max_new_tokens=args.max_new_tokens, eos_token_id=eos)[:, width:]
        ref = ref.cpu()
        same = [torch.equal(out.completion_ids[i, :int(out.completion_mask[i].sum())],
                            ref[i, :int(out.completion_mask[i].sum())]) for i in range(len(ids))]
        res["engine_equals_mla_generate_fp32"] = same
        bf = EngineSampler(mla, tok, max_batch=8, max_seq_len=512, dtype=torch.bfloat16).generate(ids, 1, params)
        res["texts_fp32"] = list(out.texts)  # RolloutBatch.texts may be a LazyTexts, which json cannot write
        res["texts_bf16"] = list(bf.texts)
        res["cuda_graphs"] = EngineSampler(mla, tok, max_batch=8).cuda_graphs
    if args.throughput:
        prompts = [f"What is {a} + {3 * a + 7}?" for a in range(16)]
        ids = [list(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]) for p in prompts]
        p = SamplingParams(max_new_tokens=256, temperature=1.0, min_new_tokens=256)
        for name, model in (("original", dense), ("mla", mla)):
            eng = EngineSampler(model, tok, max_batch=128, max_seq_len=512, dtype=torch.bfloat16)
            times = []
            for _ in range(3):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                eng.generate(ids, 8, p)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            res[f"{name}_rollout_tok_per_s"] = round(128 * 256 / min(times[1:]), 1)
            eng.release()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

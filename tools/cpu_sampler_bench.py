"""CPU sampler throughput on SmolLM2-135M: HF generate (fp32) vs the engine in fp32 and bf16, 8 prompts x G=8 x 48 tokens.
Run: GRPO_CACHE=... python tools/cpu_sampler_bench.py   (docs/performance.md: 240 vs 93 tok/s, 2026-11-23, 2-core AMD EPYC)"""
import time, torch
torch.set_flush_denormal(True)
from grpo.models import load_model, load_tokenizer
from grpo.rollout import SamplingParams, HFSampler, encode_prompts
from grpo.engine import EngineSampler
from grpo.data import load_examples
tok = load_tokenizer("smollm2-135m-instruct"); m = load_model("smollm2-135m-instruct")
ex = load_examples("arithmetic", n=8, seed=0, difficulty=[1,2,5])
_, ids = encode_prompts(tok, ex, "r1_zero", "")
print("prompt lens", [len(i) for i in ids])
sp = SamplingParams(max_new_tokens=48, temperature=0.8)
for name, s in [("hf", HFSampler(m, tok, batch_size=64)), ("eng32", EngineSampler(m, tok, max_batch=64, max_seq_len=256)),
                ("eng16", EngineSampler(m, tok, max_batch=64, max_seq_len=256, dtype=torch.bfloat16))]:
    for r in range(2):
        t=time.time(); b = s.generate(ids, 8, sp); dt=time.time()-t
        print(name, r, f"{dt:.1f}s", int(b.completion_mask.sum()), "tok", f"{b.completion_mask.sum().item()/dt:.0f} tok/s", flush=True)

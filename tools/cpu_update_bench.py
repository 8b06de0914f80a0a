"""One update micro-batch (16 rows = 2 prompts x 8 completions, 80-token prompts) on SmolLM2-135M under CPU bf16
autocast: forward+backward time with and without shared-prompt packing.
Run: GRPO_CACHE=... python tools/cpu_update_bench.py   (docs/performance.md: 12.6-14.2 s -> 5.0-5.8 s, 2026-11-23, 2-core AMD EPYC)"""
import time, torch
torch.set_flush_denormal(True)
from grpo.models import load_model
from grpo.logprobs import pack, token_logprobs
m = load_model("smollm2-135m-instruct"); m.train()
G=16; P=80; C=45
p1=[int(x) for x in torch.randint(100,40000,(P,))]; p2=[int(x) for x in torch.randint(100,40000,(P-3,))]
prompts=[p1]*8+[p2]*8
comp=torch.randint(100,40000,(G,C)); lens=torch.randint(20,46,(G,)); mask=(torch.arange(C)[None]<lens[:,None]).long()
b=pack(prompts, comp*mask, mask, 0)
for share in (False, True, False, True):
    t=time.time()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, e = token_logprobs(m, b, 0.8, with_entropy=True, share_prompts=share)
    t1=time.time()
    (lp.float().sum()).backward()
    t2=time.time()
    print("share", share, f"fwd {t1-t:.2f} bwd {t2-t1:.2f}", flush=True)
    m.zero_grad(set_to_none=True)

"""How much one bias step moves the expert load of a converted, calibrated, unhealed MoE model (CPU, fp32).

SmolLM2-135M-Instruct converted to 8 experts top-2 + 1 shared with `calibrate_bias_steps: 200` exactly as the
GRPO trainer does it (quickstart's first 64 prompts + one 48-token continuation each, temperature 0.8). One
GRPO-like batch (4 random training prompts x 8 samples from the MoE model itself) is then routed again with
the weights and tokens fixed:

    base        the calibrated bias, fp32
    bf16        the same under bf16 autocast (the trainer's default on AMX CPUs and GPUs)
    ±δ          every expert of every layer moved by +δ or −δ (random signs, two draws): what one online
                sign step of γ = δ does when the loads carry no information

Load = max/mean expert load over the batch's real tokens, mean over layers.

    python tools/moe_bias_sensitivity.py [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.adapters import BiasCalibration, apply_adapters, moe_layers  # noqa: E402


@torch.no_grad()
def load_max_over_mean(moe, ids, mask, bf16: bool = False) -> float:
    loads = []

    def hook(module, args):
        x = args[0].reshape(-1, args[0].shape[-1]).float()[mask.reshape(-1).bool()]
        s = torch.sigmoid(x @ module.router.weight.float().t())                       # [N, E]
        idx = torch.topk(s + module.e_score_correction_bias, module.cfg.top_k, dim=-1).indices
        load = torch.bincount(idx.reshape(-1), minlength=module.cfg.num_experts).float()
        loads.append(float(load.max() / load.mean()))

    hooks = [m.register_forward_pre_hook(hook) for m in moe_layers(moe)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        moe(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return sum(loads) / len(loads)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from grpo.data import load_examples
    from grpo.models import load_model, load_tokenizer
    from grpo.rollout import HFSampler, SamplingParams, encode_prompts
    tokenizer = load_tokenizer(args.model)
    dense = load_model(args.model).eval()
    train = load_examples("arithmetic", n=4000, seed=0, difficulty=[1, 2, 5])   # recipes/quickstart.yaml
    params = SamplingParams(max_new_tokens=48, temperature=0.8)
    calib = BiasCalibration(encode_prompts(tokenizer, train[:64], "r1_zero")[1], tokenizer, params)
    moe = apply_adapters(copy.deepcopy(dense), {"moe": {"num_experts": 8, "top_k": 2, "num_shared": 1,
                                                        "calibrate_bias_steps": 200}}, moe_calibration=calib)
    torch.manual_seed(11)
    examples = [train[i] for i in torch.randperm(len(train))[:4].tolist()]
    rb = HFSampler(moe, tokenizer, 256).generate(encode_prompts(tokenizer, examples, "r1_zero")[1], 8, params)
    seqs = [p + c[m.bool()].tolist() for p, c, m in zip(rb.prompt_ids, rb.completion_ids, rb.completion_mask)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)                       # right-padded [B, T]
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    print(f"batch: {len(seqs)} rows, {int(mask.sum())} tokens")
    print(f"base fp32: {load_max_over_mean(moe, ids, mask):.3f}")
    print(f"base bf16 autocast: {load_max_over_mean(moe, ids, mask, bf16=True):.3f}")
    base = [m.e_score_correction_bias.clone() for m in moe_layers(moe)]
    for delta in (1e-5, 1e-4, 1e-3):
        out = []
        for draw in range(2):
            gen = torch.Generator().manual_seed(draw)
            for m, b in zip(moe_layers(moe), base):
                m.e_score_correction_bias.copy_(b + delta * torch.sign(torch.randn(b.shape, generator=gen)))
            out.append(load_max_over_mean(moe, ids, mask))
        print(f"±{delta:g} on every expert of every layer: " + ", ".join(f"{x:.3f}" for x in out))
    for m, b in zip(moe_layers(moe), base):
        m.e_score_correction_bias.copy_(b)


if __name__ == "__main__":
    main()

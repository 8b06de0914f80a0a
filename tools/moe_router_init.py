"""Router initialisation of the DeepSeekMoE conversion, measured on SmolLM2-135M-Instruct (CPU, fp32).

Compares the previous init (neurons dealt round-robin, tiny random router; `old_init` below reproduces it) with
the current one (balanced k-means of gate rows, router = mean gate row of each expert), each without and
with the bias calibration (`moe.calibrate_bias_steps`) as the GRPO trainer runs it: the quickstart's first 64
training prompts and one continuation of each sampled by the converted model (48 tokens, temperature 0.8).
Evaluation text, unseen by the calibration: 8 other quickstart prompts, each with a 48-token completion
sampled from the dense model, and a paragraph of English prose. Per variant:

    max |Δlogit|, mean |Δlogit|   top-k MoE vs. dense logits over the evaluation tokens
    top-1 agree                   fraction of tokens whose argmax equals the dense model's
    layer rel. err                ‖MoE_l(u) − MLP_l(u)‖ / ‖MLP_l(u)‖ per token on the dense model's own MLP inputs u
                                  (one layer swapped at a time, no compounding), mean over tokens and layers
    score std                     per-token std of the sigmoid router scores across experts (mean; min-max by layer)
    load max/mean                 expert load of the router's choice (with bias), mean over layers

    python tools/moe_router_init.py [--experts 8 --top-k 2 --shared 1 --steps 200 --threads 1]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.adapters import BiasCalibration, apply_adapters, moe_layers  # noqa: E402
from grpo.adapters.moe import DeepSeekMoE  # noqa: E402

PROSE = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
         "movable metal type, oil-based ink and a wooden screw press into a system that could produce books far "
         "faster than scribes. Within fifty years presses operated in more than two hundred European cities, and "
         "the price of books fell sharply. Historians still argue about how quickly literacy followed, but the "
         "spread of pamphlets, scientific journals and newspapers in the following centuries is hard to imagine "
         "without it. Today the same questions return with every new medium: who controls it, who can afford it, "
         "and how its readers learn to tell a reliable source from a careless one.")


@torch.no_grad()
def old_init(self: DeepSeekMoE, mlp) -> None:
    """The init before fa762c8: weight-norm ranking dealt round-robin, router ~N(0, 0.01²/D)."""
    wg, wu, wd = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    score = wg.float().norm(dim=1) * wu.float().norm(dim=1) * wd.float().norm(dim=0)
    order = torch.argsort(score, descending=True)
    shared, rest = order[:self.shared_dim], order[self.shared_dim:]
    e, d_e = self.cfg.num_experts, self.expert_dim
    routed = rest.view(d_e, e).t().reshape(-1)
    self.copy_neurons(mlp, shared, routed)
    gen = torch.Generator().manual_seed(1000 + self.layer)
    self.router.weight.copy_(torch.randn(self.router.weight.shape, generator=gen)
                             * (0.01 / self.router.weight.shape[1] ** 0.5))


def texts(tokenizer, dense, n_calib: int = 64):
    from grpo.data import load_examples
    from grpo.rollout import encode_prompts
    train = load_examples("arithmetic", n=4000, seed=0, difficulty=[1, 2, 5])   # recipes/quickstart.yaml
    calib = encode_prompts(tokenizer, train[:n_calib], "r1_zero")[1]
    held = encode_prompts(tokenizer, train[1000:1008], "r1_zero")[1]
    torch.manual_seed(0)
    evals = []
    for p in held:
        out = dense.generate(torch.tensor([p]), max_new_tokens=48, do_sample=True, temperature=0.8,
                             pad_token_id=tokenizer.pad_token_id)
        evals.append(out[0].tolist())
    evals.append(tokenizer(PROSE)["input_ids"])
    width = max(len(s) for s in evals)
    ids = torch.full((len(evals), width), tokenizer.pad_token_id or 0, dtype=torch.long)   # right-padded [B, T]
    mask = torch.zeros_like(ids)
    for i, s in enumerate(evals):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return calib, ids, mask


@torch.no_grad()
def dense_mlp_inputs(dense, ids, mask) -> list[torch.Tensor]:
    """The real tokens' MLP inputs [N, D] of every dense layer."""
    caps = []
    hooks = [layer.mlp.register_forward_pre_hook(
        lambda m, args: caps.append(args[0].reshape(-1, args[0].shape[-1])[mask.reshape(-1).bool()]))
        for layer in dense.model.layers]
    dense(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return caps


@torch.no_grad()
def layer_error(dense, moe, inputs) -> float:
    errs = []
    for layer, m, u in zip(dense.model.layers, moe_layers(moe), inputs):
        ref = layer.mlp(u[None])[0]
        errs.append(float(((m(u[None])[0] - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)).mean()))
    return sum(errs) / len(errs)


@torch.no_grad()
def measure(moe, ref_logits, ids, mask) -> dict:
    spreads, loads = [], []

    def hook(module, args):
        x = args[0].reshape(-1, args[0].shape[-1])[mask.reshape(-1).bool()].float()
        s = torch.sigmoid(x @ module.router.weight.float().t())                      # [N, E]
        spreads.append(float(s.std(-1).mean()))
        idx = torch.topk(s + module.e_score_correction_bias, module.cfg.top_k, dim=-1).indices
        load = torch.bincount(idx.reshape(-1), minlength=module.cfg.num_experts).float()
        loads.append(float(load.max() / load.mean()))

    hooks = [m.register_forward_pre_hook(hook) for m in moe_layers(moe)]
    logits = moe(input_ids=ids, attention_mask=mask).logits
    for h in hooks:
        h.remove()
    real = mask.bool()
    diff = (logits - ref_logits)[real].abs()
    agree = (logits.argmax(-1) == ref_logits.argmax(-1))[real].float().mean()
    return {"max_dlogit": float(diff.max()), "mean_dlogit": float(diff.mean()), "top1_agree": float(agree),
            "score_std": sum(spreads) / len(spreads), "score_std_min": min(spreads), "score_std_max": max(spreads),
            "load": sum(loads) / len(loads)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--shared", type=int, default=1)
    ap.add_argument("--steps", type=int, default=200, help="moe.calibrate_bias_steps of the calibrated rows")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from grpo.models import load_model, load_tokenizer
    tokenizer = load_tokenizer(args.model)
    dense = load_model(args.model).eval()
    calib, ids, mask = texts(tokenizer, dense)
    with torch.no_grad():
        ref = dense(input_ids=ids, attention_mask=mask).logits
    inputs = dense_mlp_inputs(dense, ids, mask)
    print(f"calibration: {len(calib)} prompts ({sum(map(len, calib))} tokens) + one 48-token continuation each; "
          f"evaluation: {int(mask.sum())} tokens")
    from grpo.rollout import SamplingParams
    batch = BiasCalibration(calib, tokenizer, SamplingParams(max_new_tokens=48, temperature=0.8))
    moe_cfg = {"num_experts": args.experts, "top_k": args.top_k, "num_shared": args.shared}
    print("init | calibration | max |Δlogit| | mean |Δlogit| | top-1 agree | layer rel. err | "
          "score std mean (min-max by layer) | load max/mean")
    new_init = DeepSeekMoE.init_from_dense
    for name, init in (("old", old_init), ("new", new_init)):
        DeepSeekMoE.init_from_dense = init
        try:
            for steps in (0, args.steps):
                moe = apply_adapters(copy.deepcopy(dense), {"moe": {**moe_cfg, "calibrate_bias_steps": steps}},
                                     moe_calibration=batch)
                r = measure(moe, ref, ids, mask)
                err = layer_error(dense, moe, inputs)
                print(f"{name} | {steps or 'off'} | {r['max_dlogit']:.2f} | {r['mean_dlogit']:.3f} | "
                      f"{r['top1_agree']:.3f} | {err:.3f} | {r['score_std']:.4f} ({r['score_std_min']:.4f}-"
                      f"{r['score_std_max']:.4f}) | {r['load']:.2f}", flush=True)
                del moe
        finally:
            DeepSeekMoE.init_from_dense = new_init


if __name__ == "__main__":
    main()

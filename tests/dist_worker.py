"""Worker for tests/test_distributed.py, launched by torchrun with 1 or 2 CPU processes (gloo).

    python -m torch.distributed.run --nproc-per-node N tests/dist_worker.py OUT_DIR

Every process builds the same tiny model and the same global rollout batch (sampled once with a fixed
seed from the unwrapped model, identical on all processes), keeps the rows of its own prompts (the
`picked[process_index::num_processes]` sharding of `next_prompts`), computes advantages from fixed
rewards and runs the real `grpo.train.policy_update` (DDP gradient all-reduce, global normalisers). For
loss types grpo and dapo, rows 1, 9 and 10 count as unscored (no reward applied): they leave the loss and
its normalisers, and the group of rows 9-11 keeps one scored row, so gets no advantage; process 0 then
holds one unscored row and process 1 two, so the global counts differ from the local ones.
The main process writes, per loss type: the prompt ids each process drew, the gathered advantages, the
global loss, the gradients just before the optimizer step, the parameters after it, and the LR. Last, a
whole `grpo.train.train` run of 2 steps writes completions.jsonl, whose rows the main process returns.
"""
from __future__ import annotations

import sys
from pathlib import Path

# run as a script, tests/ would be first on sys.path and tests/data/ would shadow the `data` package
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]

import torch  # noqa: E402


def slice_rows(rollout, keep: torch.Tensor, new_group: torch.Tensor):
    from grpo.rollout import RolloutBatch

    idx = keep.nonzero().squeeze(1)
    return RolloutBatch(prompt_ids=[rollout.prompt_ids[i] for i in idx.tolist()],
                        completion_ids=rollout.completion_ids[idx], completion_mask=rollout.completion_mask[idx],
                        logprobs=None if rollout.logprobs is None else rollout.logprobs[idx],
                        texts=[rollout.texts[i] for i in idx.tolist()], group=new_group[idx],
                        truncated=rollout.truncated[idx])


def one(loss_type: str, out_dir: str) -> dict:
    from accelerate.utils import gather_object

    from grpo.algorithms import group_advantages
    from grpo.config import load_config
    from grpo.rollout import SamplingParams, encode_prompts
    from grpo.testing import char_tokenizer, tiny_model
    from grpo.train import next_prompts, policy_update, setup

    cfg = load_config(base={
        "data": {"train": {"source": "arithmetic", "options": {"n": 16, "seed": 0, "difficulty": [1]}}},
        "rewards": ["accuracy"],
        "sampling": {"group_size": 3, "max_new_tokens": 6},
        "algorithm": {"loss_type": loss_type},
        "optim": {"steps": 4, "prompts_per_step": 4, "micro_batch_size": 2, "lr": 1e-3, "warmup_steps": 3,
                  "max_grad_norm": 1e6},
        "eval": {"before": False, "after": False},
        "run": {"output_dir": f"{out_dir}/{loss_type}", "progress": False, "mixed_precision": "no"},
    })
    tok = char_tokenizer()
    state = setup(cfg, model=tiny_model(tok, seed=0), tokenizer=tok)
    acc = state.accelerator
    mine = next_prompts(state)
    drawn = gather_object([[e.id for e in mine]])

    # the global batch of this step, in the single-process order, sampled identically on every process
    cursor = 0
    picked = [state.train_examples[i] for i in state.order[cursor:cursor + cfg.optim.prompts_per_step]]
    _, prompt_ids = encode_prompts(tok, picked, cfg.data.template, cfg.data.assistant_prefix)
    torch.manual_seed(1234)
    with torch.no_grad():
        rollout = state.sampler.generate(prompt_ids, cfg.sampling.group_size,
                                         SamplingParams(max_new_tokens=6, temperature=1.0))
    n_rows = len(rollout.texts)
    rewards = torch.tensor([float((3 * i) % 5) for i in range(n_rows)])   # fixed, non-constant within groups

    p, n = acc.process_index, acc.num_processes
    keep = rollout.group % n == p
    local = slice_rows(rollout, keep, rollout.group // n)
    scored = torch.ones(n_rows, dtype=torch.bool)
    if loss_type in ("grpo", "dapo"):
        scored[[1, 9, 10]] = False
        rewards[~scored] = float("nan")
    adv = group_advantages(rewards[keep], local.group, cfg.algorithm.scale_rewards, cfg.algorithm.adv_eps,
                           valid=scored[keep])

    grads: dict[str, torch.Tensor] = {}
    inner = getattr(state.optimizer, "optimizer", state.optimizer)

    def capture(opt, args, kwargs):
        for name, prm in acc.unwrap_model(state.model).named_parameters():
            grads[name] = prm.grad.detach().clone()

    inner.register_step_pre_hook(capture)
    upd = policy_update(state, local, (adv, scored[keep]) if loss_type in ("grpo", "dapo") else adv)
    # advantages in global row order: each process's rows, put back where they came from
    row_ids = gather_object([keep.nonzero().squeeze(1).tolist()])
    advs = gather_object([adv.tolist()])
    loss = float(acc.reduce(torch.tensor(upd["loss"]), "sum"))
    params = {k: v.detach().clone() for k, v in acc.unwrap_model(state.model).state_dict().items()}
    return {"drawn": drawn, "row_ids": row_ids, "advantages": advs, "loss": loss, "grad_norm": upd["grad_norm"],
            "grads": grads, "params": params, "lr": state.scheduler.get_last_lr()[0], "is_main": acc.is_main_process}


def completions(out_dir: str) -> list[dict] | None:
    """A real 2-step run with save_completions: completions.jsonl as the main process wrote it (None
    elsewhere). train() ends with Accelerator.end_training, which closes the process group: run it last."""
    import json

    from grpo.config import load_config
    from grpo.testing import char_tokenizer, tiny_model
    from grpo.train import train

    cfg = load_config(base={
        "data": {"train": {"source": "arithmetic", "options": {"n": 16, "seed": 0, "difficulty": [1]}}},
        "rewards": ["accuracy"], "sampling": {"group_size": 3, "max_new_tokens": 4},
        "optim": {"steps": 2, "prompts_per_step": 4, "micro_batch_size": 4, "lr": 1e-3},
        "eval": {"before": False, "after": False},
        "run": {"output_dir": f"{out_dir}/completions", "progress": False, "mixed_precision": "no"},
    })
    tok = char_tokenizer()
    train(cfg, model=tiny_model(tok, seed=0), tokenizer=tok)
    path = Path(cfg.run.output_dir) / "completions.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else None


def main(out_dir: str) -> None:
    results = {lt: one(lt, out_dir) for lt in ("dapo", "grpo", "dr_grpo")}
    is_main = next(iter(results.values()))["is_main"]
    results["completions"] = completions(out_dir)
    if is_main:
        torch.save(results, f"{out_dir}/result.pt")
    # as the trainer does (Accelerator.end_training): a gloo group left to interpreter shutdown aborted a
    # process now and then ("terminate called without an active exception", exit -6, ~1 run in 8)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

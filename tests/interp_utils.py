"""Helpers shared by the Triton-kernel tests that run on CPU through Triton's interpreter.

TRITON_INTERPRET=1 must be set before triton is imported, so each check runs as a script in a subprocess.
ENGINE_SETUP is the preamble of the engine-level scripts: a tokenizer stub, three prompts of different
lengths, and `tiny_model(config_class)`, a 2-layer random model whose weights are scaled up so that sampled
and greedy tokens vary from step to step.
"""
import os
import subprocess
import sys

ENGINE_SETUP = r"""
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
from grpo.engine import EngineSampler
from grpo.rollout import SamplingParams

class Tok:
    pad_token_id, eos_token_id = 0, 2
    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(map(str, r)) for r in rows]

prompts = [[1, 5, 9, 14, 3], [1, 7], [1, 20, 21, 22, 23, 24, 25, 26, 27]]

def tiny_model(cls=LlamaConfig):
    torch.manual_seed(0)
    cfg = cls(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() == 2 else p.add_(0.1 * torch.randn_like(p))
    model.generation_config.eos_token_id = 2
    return model
"""


def run_interpreted(script: str) -> str:
    """Run `script` with TRITON_INTERPRET=1 in a fresh interpreter; assert it exits 0; return its stdout."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout

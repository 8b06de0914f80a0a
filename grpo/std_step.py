"""The std-step workload: one fixed GRPO step that `python -m grpo.bench` times against TRL and the
profiling tools in tools/ (step_trace, mem_probe, reward_profile, ...) take apart.

SmolLM2-135M-Instruct (or, with --cpu-tiny, a tiny random Llama with its tokenizer), 16 prompts x G = 8
= 128 completions per step, exactly 256 new tokens each (no early stop), temperature 1.0, bf16 weights,
beta = 0, one inner iteration, one optimizer step. Every implementation gets the same weights (one
state dict), the same arithmetic chat prompts and the same device.

Here: the prompts, the weights, our trainer's config for the workload, fixed-length sampling, and the
command-line flags that describe it (`add_workload_args` + `fill_defaults`), so the bench and the tools
build exactly the same step.
"""
from __future__ import annotations

import argparse
import dataclasses
import random

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def arithmetic_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """The workload's prompts: (question, answer)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        rows.append((f"What is {a} + {b} * {c}? Put the final answer in \\boxed{{}}.", str(a + b * c)))
    return rows


def chat_prompt_ids(tok, rows) -> list[list[int]]:
    from grpo.data.templates import render

    texts = [render(tok, [{"role": "user", "content": q}]) for q, _ in rows]
    return tok(texts, add_special_tokens=False)["input_ids"]


def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


def load_weights(args):
    """(LlamaConfig, fp32 state dict on CPU, tokenizer) shared by every implementation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if args.gguf_dir:
        tok = AutoTokenizer.from_pretrained(args.gguf_dir, gguf_file=GGUF)
        q = AutoModelForCausalLM.from_pretrained(args.gguf_dir, gguf_file=GGUF, dtype=torch.float32)
        cfg = q.config.to_dict()
        cfg.pop("quantization_config", None)  # a GGUF load is flagged quantized: rebuild as plain Llama
        config, sd = LlamaConfig(**cfg), {k: v.clone() for k, v in q.state_dict().items()}
        del q
    else:
        from grpo.models import load_tokenizer

        tok = load_tokenizer("smollm2-135m-instruct")
        torch.manual_seed(0)
        config = tiny_llama_config()
        sd = AutoModelForCausalLM.from_config(config).state_dict()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return config, sd, tok


def build_model(config, sd, dtype, device):
    """The model of `config` on `device` with the weights `sd`, or (sd None) random weights from seed 0, the
    same for every call on the same device (grpo.bench_scale's shapes). Built on the device: an 8B model's
    random init on the host takes minutes."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if sd is not None:
        model.load_state_dict(sd, strict=False)  # tied lm_head may be absent from the state dict
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.to(device)


class FixedLength:
    """Sampler wrapper for std-step: every completion has exactly max_new_tokens (no early stop)."""

    def __init__(self, inner):
        self.inner = inner

    def generate(self, prompt_ids, group_size, params):
        return self.inner.generate(prompt_ids, group_size,
                                   dataclasses.replace(params, min_new_tokens=params.max_new_tokens))


def ours_config(args, gpu: bool, out_dir: str):
    """Our trainer's config for the workload, from the flags of `add_workload_args`."""
    from grpo.config import load_config

    return load_config(None, [
        f"sampling.backend={args.backend}", f"sampling.group_size={args.group}",
        f"sampling.max_new_tokens={args.tokens}", "sampling.temperature=1.0",
        f"sampling.batch_size={args.prompts * args.group}", f"optim.prompts_per_step={args.prompts}",
        f"optim.steps={args.steps}", "optim.lr=1e-6", f"optim.micro_batch_size={args.micro_batch}",
        f"model.gradient_checkpointing={str(args.grad_ckpt).lower()}", f"algorithm.kl_coef={args.beta}",
        f"model.compile={str(args.compile_model).lower()}", f"model.cuda_graphs={str(args.update_graphs).lower()}",
        "algorithm.num_iterations=1", "data.template=plain", f"run.output_dir={out_dir}",
        "run.save_completions=false", "run.progress=false", "eval.before=false", "eval.after=false",
        f"run.mixed_precision={'bf16' if gpu else repr('no')}",
    ] + ([f"optim.micro_batch_tokens={args.micro_batch_tokens}"] if getattr(args, "micro_batch_tokens", None) else [])
      + (["optim.oom_retry=false"] if getattr(args, "no_oom_retry", False) else [])
      + ([f"model.adapter={args.adapter}"] if getattr(args, "adapter", None) else []))


def ours_dtype(args, gpu: bool):
    """bf16 weights as TRL loads them; --master-fp32: fp32 weights + bf16 autocast, as the trainer runs a
    recipe (lr 1e-6 updates vanish in bf16 weights)."""
    return torch.bfloat16 if gpu and not args.master_fp32 else torch.float32


def add_workload_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags that choose the weights, the workload's size and how our trainer runs it."""
    p.add_argument("--gguf-dir", default=None, help="folder holding " + GGUF)
    p.add_argument("--cpu-tiny", action="store_true", help="tiny random Llama on CPU (tokenizer: bundled SmolLM2)")
    p.add_argument("--steps", type=int, default=None, help="our timed steps (default 7 GPU, 4 CPU)")
    p.add_argument("--prompts", type=int, default=None)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--tokens", default=None, help="new tokens per completion; a comma-separated list with --shape")
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--backend", default="engine", choices=["engine", "hf"])
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--master-fp32", action="store_true", help="ours with fp32 weights + bf16 autocast (recipes' default)")
    p.add_argument("--share-prompts", action=argparse.BooleanOptionalAction, default=True,
                   help="update forward: each repeated prompt once (grpo.logprobs shared layout) or padded rows")
    p.add_argument("--compile-logprobs", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the chunked log-prob head (default: when the layers are compiled)")
    p.add_argument("--logprob-chunk", type=int, default=None,
                   help="tokens per log-prob head chunk in the update (grpo.logprobs default: 1024)")
    p.add_argument("--compile-model", action=argparse.BooleanOptionalAction, default=None,
                   help="ours with model.compile=true (compiled layers; default on GPU)")
    p.add_argument("--update-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="ours with model.cuda_graphs=true (update forward/backward replayed from CUDA graphs; "
                        "default on GPU)")
    p.add_argument("--keep-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="engine: keep the KV cache and graphs through the update (default: the sampler's own)")
    p.add_argument("--update-attention", choices=("auto", "rows", "dense", "flex"), default="auto",
                   help="shared-prompt layout attention in the update (grpo.logprobs.token_logprobs)")
    return p


def fill_defaults(args, gpu: bool) -> None:
    """The defaults that depend on the device (std-step on a GPU, a short tiny run on the CPU)."""
    args.prompts = args.prompts or (16 if gpu else 4)
    args.tokens = args.tokens or (256 if gpu else 32)
    args.steps = args.steps or (7 if gpu else 4)
    args.micro_batch = args.micro_batch or (128 if gpu else 16)
    args.compile_model = gpu if args.compile_model is None else args.compile_model
    args.update_graphs = gpu if args.update_graphs is None else args.update_graphs
    if args.cpu_tiny:
        args.gguf_dir = None


def parse_workload(argv: list[str], gpu: bool) -> argparse.Namespace:
    """The workload's flags parsed and defaulted, for tools that build the step themselves."""
    args = add_workload_args(argparse.ArgumentParser(prog="std-step")).parse_args(argv)
    args.tokens = int(args.tokens) if args.tokens else None
    fill_defaults(args, gpu)
    return args

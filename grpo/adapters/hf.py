"""Save/load of converted models through the HF Auto classes.

We register our own config/model types (``llama_grpo``, ``qwen2_grpo``) rather than mapping onto
``deepseek_v3``: that mapping is not exact for a converted Llama/Qwen2 model. DeepseekV3 shares one
rotary key head across all heads and applies RoPE to a contiguous block of dims, while MHA2MLA keeps
a per-KV-head choice of frequency pairs; it has no GQA grouping of the absorbed queries, no
attention biases (Qwen2), and it uses no shared-expert/neuron split of a SwiGLU MLP with our
gate normalisation. Our classes subclass the base Llama/Qwen2 classes, keep every weight name of the
parts we do not touch, and rebuild the MLA/MoE modules from ``config.adapter`` before the weights
are loaded, so ``save_pretrained`` + ``AutoModelForCausalLM.from_pretrained`` round-trip exactly.
Importing ``grpo.adapters`` performs the registration.
"""
from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama import LlamaConfig, LlamaForCausalLM
from transformers.models.qwen2 import Qwen2Config, Qwen2ForCausalLM


def build_structure(model, adapter: dict) -> None:
    """Swap in MLA/MoE modules with uninitialised weights (shapes from the config only)."""
    from . import parse_adapter_config
    from .mla import convert_mla
    from .moe import convert_moe
    mla, moe = parse_adapter_config(adapter)
    if mla is not None:
        convert_mla(model, mla, init=False)
    if moe is not None:
        convert_moe(model, moe, init=False)


@strict
class LlamaGrpoConfig(LlamaConfig):
    model_type = "llama_grpo"
    adapter: dict | None = None


@strict
class Qwen2GrpoConfig(Qwen2Config):
    model_type = "qwen2_grpo"
    adapter: dict | None = None


class LlamaGrpoForCausalLM(LlamaForCausalLM):
    config_class = LlamaGrpoConfig

    def __init__(self, config):
        super().__init__(config)
        build_structure(self, config.adapter or {})


class Qwen2GrpoForCausalLM(Qwen2ForCausalLM):
    config_class = Qwen2GrpoConfig

    def __init__(self, config):
        super().__init__(config)
        build_structure(self, config.adapter or {})


_BY_BASE = {"llama": (LlamaGrpoConfig, LlamaGrpoForCausalLM), "qwen2": (Qwen2GrpoConfig, Qwen2GrpoForCausalLM)}

for _cfg, _model in _BY_BASE.values():
    AutoConfig.register(_cfg.model_type, _cfg, exist_ok=True)
    AutoModelForCausalLM.register(_cfg, _model, exist_ok=True)


def supported(model) -> bool:
    return model.config.model_type in _BY_BASE


def mark_adapted(model, adapter: dict) -> None:
    """Re-class a converted model (and its config) so that save_pretrained writes our model type."""
    base = model.config.model_type
    if base not in _BY_BASE:
        raise ValueError(f"adapters support model types {sorted(_BY_BASE)}, got {base!r}")
    cfg_cls, model_cls = _BY_BASE[base]
    model.config.__class__ = cfg_cls
    model.config.adapter = adapter
    model.config.architectures = [model_cls.__name__]
    model.__class__ = model_cls

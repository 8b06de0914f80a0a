"""Fast rollout engine: static KV cache, CUDA-graph decode, one prefill per prompt shared by its G
samples. `EngineSampler` implements `grpo.rollout.Sampler`; `attention.LayerAttention` is the
per-layer hook other attention kinds (the MLA adapter's latent cache, grpo.engine.mla_decode) plug into, and
an MLP's `engine_mlp` the one for other MLPs (DeepSeekMoE, grpo.engine.moe_decode)."""
from grpo.engine.attention import DecodeContext, GQAAttention, LayerAttention, PrefillContext
from grpo.engine.sampler import EngineSampler

__all__ = ["EngineSampler", "LayerAttention", "GQAAttention", "PrefillContext", "DecodeContext"]

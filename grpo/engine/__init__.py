"""Fast rollout engine: static KV cache, CUDA-graph decode, one prefill per prompt shared by its G
samples. `EngineSampler` implements `grpo.rollout.Sampler`; `attention.LayerAttention` is the
per-layer hook other attention kinds (the MLA adapter's latent cache) plug into."""
from grpo.engine.attention import DecodeContext, GQAAttention, LayerAttention, PrefillContext
from grpo.engine.sampler import EngineSampler

__all__ = ["EngineSampler", "LayerAttention", "GQAAttention", "PrefillContext", "DecodeContext"]

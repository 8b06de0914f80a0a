"""Public model shapes and the arithmetic of one GRPO step at a shape: parameters, the bytes the decode must
read, the FLOPs of the update, the update's memory per token. Pure functions (no device work); the
measured rates they are divided by come from `grpo.bench`.

Notation: L layers, D hidden size, Hq / Hkv query / key-value heads of width d, I the MLP width, V the
vocabulary; a step samples N = B prompts x G completions of T new tokens after prompts of P tokens.

    matmul params    M = L·(D·Hq·d + 2·D·Hkv·d + Hq·d·D + 3·D·I)            (attention + gated MLP)
    head params      V·D                                                    (LM head, tied or not)
    KV bytes/token   L · 2·Hkv·d · e                                        (e: bytes per element)

Physical floor of one step (`step_floor`), each phase at the larger of its memory and compute time
(roofline) on a device that moves `bandwidth` bytes/s and does `flops` matmul FLOP/s:
- prefill: reads the weights once; 2·M·B·P + 2·V·D·B FLOPs (+ causal attention over the B prompts);
- decode, for each of the T - 1 steps t: reads the weights (M + V·D)·e once, and the KV cache of the
  context, each group's prompt once (B·P tokens) plus each row's own t completion tokens (N·t); computes
  2·(M + V·D)·N + 4·L·Hq·d·N·(P + t) FLOPs;
- update (`update_flops`): one forward over the shared-prompt layout (prompts once per group: B·P + N·T
  tokens through the layers, the LM head on the N·T completion tokens), F = 2·M·(B·P + N·T) + 2·V·D·N·T
  + attention 4·L·Hq·d·(B·P²/2 + N·(T·P + T²/2)) (causal halves); backward is 2F; gradient checkpointing
  recomputes the forward (layers and the chunked head): F more. Total 3F, or 4F with checkpointing,
  + F for each extra no-grad forward (old log-probs when mu > 1, the reference when beta > 0);
- optimizer: AdamW reads parameter, gradient and two moments and writes three of them: 7 · e_opt bytes
  per parameter (e_opt: the parameters' element size).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's shape (Llama / Qwen2 / Qwen3 families)."""

    name: str
    family: str                  # "llama" | "qwen2" (q/k/v bias) | "qwen3" (q/k RMSNorm)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    rope_theta: float
    rms_eps: float = 1e-6
    rope_scaling: tuple = ()     # extra rope_parameters as (key, value) pairs (Llama 3's "llama3" scaling)

    @property
    def qkv_bias(self) -> bool:
        return self.family == "qwen2"

    @property
    def qk_norm(self) -> bool:
        return self.family == "qwen3"

    def hf_config(self, **overrides):
        """The transformers config of this shape (LlamaConfig / Qwen2Config / Qwen3Config)."""
        from transformers import LlamaConfig, Qwen2Config, Qwen3Config

        rope = {"rope_type": "default", "rope_theta": self.rope_theta, **dict(self.rope_scaling)}
        common = dict(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                      num_hidden_layers=self.layers, num_attention_heads=self.heads,
                      num_key_value_heads=self.kv_heads, rms_norm_eps=self.rms_eps,
                      tie_word_embeddings=self.tied, rope_parameters=rope, max_position_embeddings=32768,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
        common.update(overrides)
        if self.family == "llama":
            return LlamaConfig(head_dim=self.head_dim, **common)
        if self.family == "qwen2":
            if self.head_dim * self.heads != self.hidden:
                raise ValueError(f"{self.name}: Qwen2 derives head_dim from hidden / heads")
            return Qwen2Config(**common)
        if self.family == "qwen3":
            return Qwen3Config(head_dim=self.head_dim, **common)
        raise ValueError(f"unknown family {self.family!r}")

    @classmethod
    def from_hf_config(cls, cfg: Any, name: str = "model") -> "Shape":
        """The shape of a loaded model's transformers config (fields missing: ValueError)."""
        get = lambda k, default=None: getattr(cfg, k, default)  # noqa: E731
        heads = get("num_attention_heads")
        if heads is None or get("hidden_size") is None or get("num_hidden_layers") is None:
            raise ValueError(f"{type(cfg).__name__} has no hidden_size / num_hidden_layers / num_attention_heads")
        family = {"qwen2": "qwen2", "qwen3": "qwen3"}.get(get("model_type", ""), "llama")
        rope = dict(get("rope_parameters") or {})
        return cls(name=name, family=family, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, heads=heads,
                   kv_heads=get("num_key_value_heads") or heads,
                   head_dim=get("head_dim") or cfg.hidden_size // heads,
                   intermediate=get("intermediate_size") or 4 * cfg.hidden_size, vocab=cfg.vocab_size,
                   tied=bool(get("tie_word_embeddings", False)), rope_theta=float(rope.get("rope_theta", 1e4)),
                   rms_eps=float(get("rms_norm_eps", 1e-6)))


_LLAMA3_ROPE = (("rope_type", "llama3"), ("low_freq_factor", 1.0), ("high_freq_factor", 4.0),
                ("original_max_position_embeddings", 8192))

# From the models' public config.json files (hidden, layers, heads, kv heads, head_dim, MLP, vocab, tied).
SHAPES: dict[str, Shape] = {s.name: s for s in [
    Shape("smollm2-135m", "llama", 576, 30, 9, 3, 64, 1536, 49152, True, 100000.0, 1e-5),
    Shape("qwen2.5-0.5b", "qwen2", 896, 24, 14, 2, 64, 4864, 151936, True, 1e6),
    Shape("llama3.2-1b", "llama", 2048, 16, 32, 8, 64, 8192, 128256, True, 500000.0, 1e-5,
          _LLAMA3_ROPE + (("factor", 32.0),)),
    Shape("qwen2.5-1.5b", "qwen2", 1536, 28, 12, 2, 128, 8960, 151936, True, 1e6),
    Shape("qwen3-1.7b", "qwen3", 2048, 28, 16, 8, 128, 6144, 151936, True, 1e6),
    Shape("qwen2.5-3b", "qwen2", 2048, 36, 16, 2, 128, 11008, 151936, True, 1e6),
    Shape("llama3.1-8b", "llama", 4096, 32, 32, 8, 128, 14336, 128256, False, 500000.0, 1e-5,
          _LLAMA3_ROPE + (("factor", 8.0),)),
    # CPU tests and `grpo.bench --cpu-tiny --shape tiny`: SmolLM2's vocabulary, a toy body
    Shape("tiny", "llama", 64, 2, 4, 2, 16, 128, 49152, True, 10000.0, 1e-5),
]}


def shape_named(name: str) -> Shape:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r} (known: {', '.join(SHAPES)})")
    return SHAPES[name]


# ---------------------------------------------------------------- counts

def matmul_params(s: Shape) -> int:
    """M: weights of the layers' matrix products (attention projections and the gated MLP)."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return s.layers * (s.hidden * q + 2 * s.hidden * kv + q * s.hidden + 3 * s.hidden * s.intermediate)


def param_count(s: Shape) -> int:
    """All parameters: layers (matrices, norms, q/k/v biases, q/k norms), embedding, untied head, final norm."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    per_layer = 2 * s.hidden + (q + 2 * kv if s.qkv_bias else 0) + (2 * s.head_dim if s.qk_norm else 0)
    head = 0 if s.tied else s.vocab * s.hidden
    return matmul_params(s) + s.layers * per_layer + s.vocab * s.hidden + head + s.hidden


def decode_weight_bytes(s: Shape, elem: int = 2) -> int:
    """Weight bytes one decode step reads: every layer weight and the LM head (the embedding table only
    through the N looked-up rows, left out), at `elem` bytes per element."""
    return (param_count(s) - s.vocab * s.hidden * (1 if s.tied else 2) + s.vocab * s.hidden) * elem


def kv_bytes_per_token(s: Shape, elem: int = 2) -> int:
    return s.layers * 2 * s.kv_heads * s.head_dim * elem


# ---------------------------------------------------------------- floors

@dataclass(frozen=True)
class Workload:
    """One GRPO step: B prompts of P tokens (mean), G completions each of exactly T new tokens."""

    prompts: int
    group: int
    prompt_len: float
    tokens: int

    @property
    def rows(self) -> int:
        return self.prompts * self.group


def _attention_flops(s: Shape, query_context_sum: float) -> float:
    """Forward attention FLOPs (QK^T and PV, 2 each per query, key and head dim) over all layers, for a sum
    of (queries x keys they see)."""
    return 4.0 * s.layers * s.heads * s.head_dim * query_context_sum


def sampling_floor(s: Shape, w: Workload, bandwidth: float, flops: float, elem: int = 2) -> float:
    """Seconds: prefill + T - 1 decode steps, each phase max(bytes / bandwidth, FLOPs / flops)."""
    wb, kvb = decode_weight_bytes(s, elem), kv_bytes_per_token(s, elem)
    m, vd, p, n = matmul_params(s), s.vocab * s.hidden, w.prompt_len, w.rows
    pre_flops = 2.0 * m * w.prompts * p + 2.0 * vd * w.prompts + _attention_flops(s, w.prompts * p * p / 2)
    pre_bytes = wb + kvb * w.prompts * p
    total = max(pre_bytes / bandwidth, pre_flops / flops)
    for t in range(1, w.tokens):
        step_bytes = wb + kvb * (w.prompts * p + n * t) + kvb * n  # read the context, write one slot per row
        step_flops = 2.0 * (m + vd) * n + _attention_flops(s, n * (p + t))
        total += max(step_bytes / bandwidth, step_flops / flops)
    return total


def forward_flops(s: Shape, w: Workload) -> float:
    """F: one forward over the shared-prompt layout (module docstring)."""
    p, t, n = w.prompt_len, w.tokens, w.rows
    linear = 2.0 * matmul_params(s) * (w.prompts * p + n * t) + 2.0 * s.vocab * s.hidden * n * t
    return linear + _attention_flops(s, w.prompts * p * p / 2 + n * (t * p + t * t / 2))


def update_flops(s: Shape, w: Workload, checkpointing: bool = True, extra_forwards: int = 0) -> float:
    """FLOPs of the policy update: 3F (forward + backward), + F when checkpointing recomputes the forward,
    + F per extra no-grad forward."""
    return forward_flops(s, w) * (3 + int(checkpointing) + extra_forwards)


def optimizer_bytes(s: Shape, elem: int = 2) -> int:
    """AdamW: reads parameter, gradient, two moments; writes parameter and moments."""
    return 7 * param_count(s) * elem


def step_floor(s: Shape, w: Workload, bandwidth: float, flops: float, checkpointing: bool = True,
               master_fp32: bool = False) -> dict[str, float]:
    """Seconds per phase and their sum ("step") at the measured rates (bf16 compute in both precisions;
    fp32 master weights only change the optimizer's bytes)."""
    out = {"sampling": sampling_floor(s, w, bandwidth, flops),
           "update": update_flops(s, w, checkpointing) / flops,
           "optimizer": optimizer_bytes(s, 4 if master_fp32 else 2) / bandwidth}
    out["step"] = sum(out.values())
    return out


# ---------------------------------------------------------------- update memory

def update_bytes_per_token(s: Shape, context: int, checkpointing: bool = True, elem: int = 2) -> float:
    """Device bytes the update holds per token of a micro-batch (an estimate, to size micro-batches from
    free memory; the trainer's OOM retry corrects it when it is too optimistic):
    - checkpointing: each layer's input (D·e, L times) plus one layer's forward activations and their
      gradients during its recomputation; without it, every layer's activations;
    - a layer's activations: ~6 D-wide tensors (norms, residuals, attention and projection outputs), q/k/v,
      and 3 I-wide ones (gate, up, their product);
    - the rows layout's attention plan: a uint8 row of the T + P keys per completion token, its bool copy
      and up to 2 bytes of an additive mask: ~4 bytes per key;
    - the final hidden state and its gradient (D·(e + 4))."""
    qkv = (s.heads + 2 * s.kv_heads) * s.head_dim
    layer = elem * (6 * s.hidden + qkv + s.heads * s.head_dim + 3 * s.intermediate)
    body = s.layers * s.hidden * elem + 2 * layer if checkpointing else s.layers * layer + layer
    return body + 4.0 * context + s.hidden * (elem + 4)


def head_chunk_bytes(s: Shape, chunk_tokens: int = 1024) -> int:
    """The log-prob head's transient: a chunk's fp32 logits, their softmax and gradient (3 blocks)."""
    return 3 * chunk_tokens * s.vocab * 4


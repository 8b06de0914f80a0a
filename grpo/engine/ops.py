"""Small tensor functions of the engine's forward and sampler, written so that torch.compile can fuse
each into one or two kernels on CUDA (the decode step launches ~15 kernels per layer instead of ~45).

All numerics follow the Hugging Face Llama/Qwen modules they replace: RMSNorm in float32 then cast
back before the weight multiply, rotate-half RoPE, SiLU-gated MLP.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from grpo.engine.decode_attention import decode_attention


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H] -> [..., H], as LlamaRMSNorm."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """Residual add then norm: returns (x + delta, rms_norm(x + delta))."""
    x = x + delta
    return x, rms_norm(x, weight, eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q [N, T, Hq, D], k [N, T, Hkv, D], cos/sin [N, T, 1, D] -> rotated (q, k)."""
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


NEG_INF = float("-inf")


def filter_logits(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering, as HF's warpers in that order. scaled [N, V] float32."""
    if top_k > 0 and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, NEG_INF)
    if top_p < 1.0:
        srt, idx = torch.sort(scaled, dim=-1, descending=False)
        cum = srt.softmax(-1).cumsum(-1)
        drop = cum <= (1.0 - top_p)
        drop[:, -1] = False  # always keep the most likely token
        scaled = scaled.masked_fill(drop.scatter(-1, idx, drop), NEG_INF)
    return scaled


def sample_tokens(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                  banned: torch.Tensor | None = None):
    """Draw one token per row. logits [N, V] (any float dtype).

    banned: [N, V] or [V] bool of tokens that may not be drawn now (EOS before min_new_tokens), or None.
    Returns (tokens [N] long, logprobs [N] float32). The logprob is that of the drawn token under
    log_softmax(logits / temperature) before filtering and banning (temperature 0: plain logits), the
    distribution a forward pass of the policy reproduces. Sampling is Gumbel-max with exponential
    noise (argmax(p / E), E ~ Exp(1)), which needs no host sync and is capturable in a CUDA graph.
    """
    scaled = logits.float()
    if temperature > 0:
        scaled = scaled / temperature
    lse = torch.logsumexp(scaled, dim=-1)
    filt = filter_logits(scaled, top_k, top_p) if temperature > 0 else scaled
    if banned is not None:
        filt = filt.masked_fill(banned, NEG_INF)
    if temperature > 0:
        noise = torch.empty_like(filt).exponential_()
        tokens = (filt - noise.log()).argmax(dim=-1)
    else:
        tokens = filt.argmax(dim=-1)
    logprobs = scaled.gather(-1, tokens[:, None])[:, 0] - lse
    return tokens, logprobs


class Ops:
    """The functions above, compiled with torch.compile when asked (CUDA), else plain; and `w`, which
    maps a model parameter to the tensor the engine computes with (the parameter itself, or its
    low-precision shadow when the engine runs in another dtype than the weights), and
    `decode_attention` (the Triton decode kernel when `triton_attention`, else SDPA)."""

    def __init__(self, compile: bool, shadows: dict | None = None, triton_attention: bool = False):
        self.shadows = shadows if shadows is not None else {}
        self.compiled = compile
        self.triton_attention = triton_attention
        self.decode_attention = functools.partial(decode_attention, use_triton=triton_attention)
        self._plain = None
        wrap = (lambda f: torch.compile(f, dynamic=False)) if compile else (lambda f: f)
        self.rms_norm = wrap(rms_norm)
        self.add_rms_norm = wrap(add_rms_norm)
        self.rope_qk = wrap(rope_qk)
        self.swiglu = wrap(swiglu)
        self.sample_tokens = wrap(sample_tokens)

    def disable_compile(self) -> None:
        """Fall back to the plain functions in place (every holder of this Ops sees the change)."""
        plain = Ops(compile=False, shadows=self.shadows, triton_attention=self.triton_attention)
        for name in ("rms_norm", "add_rms_norm", "rope_qk", "swiglu", "sample_tokens"):
            setattr(self, name, getattr(plain, name))
        self.compiled = False

    def plain(self) -> "Ops":
        """The same weights with uncompiled functions (prefill: its shapes vary per call)."""
        if not self.compiled:
            return self
        if self._plain is None:
            self._plain = Ops(compile=False, shadows=self.shadows, triton_attention=self.triton_attention)
        return self._plain

    def w(self, p: torch.Tensor | None) -> torch.Tensor | None:
        return None if p is None else self.shadows.get(p, p)

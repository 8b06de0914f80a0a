"""One side stream per CUDA device for every CUDA graph warm-up and capture in the process.

cuBLAS keeps a workspace for each stream a GEMM has run on (32 MiB each on an H100 by torch's default
`CUBLAS_WORKSPACE_CONFIG`), allocated through the caching allocator and held until the process ends. With a
fresh `torch.cuda.Stream()` per capture (five decode buckets, the prefill buckets, the update's graphs) plus
torch's own capture stream, a std-step run held ten of them: 320 MiB of its 3.7 GiB peak
(`python tools/mem_probe.py --gguf-dir DIR`, H100, 2026-11-24). Warming up and recording on this one stream
keeps one workspace besides the default stream's.
"""
from __future__ import annotations

import torch

_STREAMS: dict[int, torch.cuda.Stream] = {}


def graph_stream(device: torch.device | str | int | None = None) -> torch.cuda.Stream:
    """The side stream of `device` (default: the current CUDA device) for graph warm-ups and captures."""
    index = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    key = index.index if index.index is not None else torch.cuda.current_device()
    if key not in _STREAMS:
        _STREAMS[key] = torch.cuda.Stream(device=key)
    return _STREAMS[key]

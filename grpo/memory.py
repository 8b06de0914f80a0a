"""The policy update's memory policy: micro-batches bounded in rows and in tokens, their size picked from
free device memory ("auto"), and what an out-of-memory error during the update looks like.

A micro-batch's cost in tokens is rows x (longest prompt + longest completion) among its rows: the padded
layout's size, an upper bound for the shared-prompt layouts (grpo.logprobs). With `groups`, micro-batches
hold whole groups (each prompt's G completions together, so the shared layouts compute the prompt once);
when a single group does not fit the limits, rows are cut one by one instead (sorted by length).

On an OOM the trainer (`grpo.train.policy_update`) halves the limits (`halve`) and runs the iteration again
from its start: gradients are zeroed, nothing has been applied to the weights yet.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

AUTO_MAX_TOKENS = 65536  # "auto" never goes above this: past ~64k tokens the GEMMs are already at full size
                         # (more tokens per micro-batch buy no speed, only memory); std-step is 41k
AUTO_MEMORY_SHARE = 0.8  # share of the free device memory "auto" plans to use


@dataclass(frozen=True)
class Limits:
    """Largest micro-batch: `rows` rows and `tokens` tokens (0: no token limit)."""

    rows: int
    tokens: int = 0


def _cost(rows: torch.Tensor, lengths: torch.Tensor, prompt_lens: torch.Tensor) -> int:
    return len(rows) * int(prompt_lens[rows].max() + lengths[rows].max()) if len(rows) else 0


def _fits(rows: torch.Tensor, lengths, prompt_lens, limits: Limits) -> bool:
    return len(rows) <= limits.rows and (not limits.tokens or _cost(rows, lengths, prompt_lens) <= limits.tokens)


def plan_micro_batches(lengths: torch.Tensor, prompt_lens: torch.Tensor, limits: Limits,
                       groups: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Row indices cut into micro-batches within `limits`. lengths, prompt_lens, groups: [N] (completion
    tokens, prompt tokens, group id of each row). With `groups`: whole groups, the groups with the most
    completion tokens first, each micro-batch filled greedily in that order; without (or when one group
    alone exceeds the limits): rows sorted by completion length, longest first, filled greedily."""
    if groups is not None and len(groups):
        members = [torch.nonzero(groups == g).flatten() for g in torch.unique(groups)]
        if all(_fits(m, lengths, prompt_lens, limits) for m in members):
            members.sort(key=lambda m: -int(lengths[m].sum()))
            out, cur = [], members[0]
            for m in members[1:]:
                joined = torch.cat([cur, m])
                if _fits(joined, lengths, prompt_lens, limits):
                    cur = joined
                else:
                    out.append(cur)
                    cur = m
            return out + [cur]
    order = torch.argsort(lengths, descending=True, stable=True)
    out, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and _fits(order[start:end + 1], lengths, prompt_lens, limits):
            end += 1
        out.append(order[start:end])
        start = end
    return out


def halve(micro: list[torch.Tensor], lengths: torch.Tensor, prompt_lens: torch.Tensor,
          limits: Limits) -> Limits | None:
    """Limits half the size of the largest micro-batch of a plan (made under `limits`) that ran out of
    memory: in rows, and in tokens where a token limit was in force (a rows-only limit stays one: a token
    limit taken from this step's lengths could split the groups of a later, longer step); None when that
    micro-batch is already one row."""
    rows = max(len(m) for m in micro)
    if rows <= 1:
        return None
    tokens = max(_cost(m, lengths, prompt_lens) for m in micro) // 2 if limits.tokens else 0
    return Limits(rows=max(1, rows // 2), tokens=max(1, tokens) if limits.tokens else 0)


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure on the device, also when another error wraps it (a CUDA graph capture ended by
    it, torch.compile's autotuning) or a library reports it in its own words (cuBLAS, cuDNN)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, torch.OutOfMemoryError):
            return True
        msg = str(exc)
        if isinstance(exc, RuntimeError) and ("out of memory" in msg or "ALLOC_FAILED" in msg):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def auto_token_limit(free_bytes: float, per_token_bytes: float, fixed_bytes: float = 0.0,
                     cap: int = AUTO_MAX_TOKENS, share: float = AUTO_MEMORY_SHARE, floor: int = 1024) -> int:
    """Tokens per micro-batch for "auto": `share` of the free memory less `fixed_bytes` (what the update
    needs whatever its size: the head's chunk, optimizer state still to be allocated), over the bytes
    per token (grpo.shapes.update_bytes_per_token), between `floor` and `cap`."""
    usable = share * free_bytes - fixed_bytes
    return int(min(cap, max(floor, usable // max(per_token_bytes, 1.0))))


def free_device_bytes(device: torch.device) -> float | None:
    """Bytes the update can still allocate on a CUDA `device`: the driver's free memory plus what torch's
    caching allocator holds unused, within the allocator's cap (torch.cuda.set_per_process_memory_fraction);
    None on other devices."""
    if torch.device(device).type != "cuda":
        return None
    index = cuda_index(device)  # accelerate's device is often a bare "cuda", which mem_get_info refuses
    free, total = torch.cuda.mem_get_info(index)
    allocated = torch.cuda.memory_allocated(index)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(index)
    return float(min(free + torch.cuda.memory_reserved(index) - allocated, fraction * total - allocated))


def cuda_index(device) -> int:
    """The ordinal of a CUDA `device` ("cuda" without one: the current device)."""
    d = torch.device(device)
    return d.index if d.index is not None else torch.cuda.current_device()

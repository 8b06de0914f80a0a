"""Per-token log-probabilities of sampled completions, computed without materialising [N, T, V] logits.

Sequences are laid out as ``[left-padded prompt | right-padded completion]`` so every completion starts
at column P (the prompt width); the hidden state at column P-1+t predicts completion token t. Only the
hidden states of real completion tokens (mask 1) go through the LM head, in chunks of `chunk_tokens`
tokens, so neither padding nor the full [N, T, V] logits are ever computed: the largest transient is one
chunk's [chunk_tokens, V] float32 logits (1024 x 49152 x 4 B = 200 MB for SmolLM2). With gradients,
each chunk runs under activation checkpointing so only hidden states are kept and the chunk's logits are
recomputed in backward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint


@dataclass
class PackedBatch:
    """Model input for a set of rollout rows.

    input_ids:      [N, P + T] long   prompt (left-padded) then completion (right-padded)
    attention_mask: [N, P + T] long
    position_ids:   [N, P + T] long   positions counted from each row's first real token
    completion_ids: [N, T] long
    completion_mask:[N, T] float
    prompt_width:   P
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    prompt_width: int

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                           self.completion_ids.to(device), self.completion_mask.to(device), self.prompt_width)

    def rows(self, idx) -> "PackedBatch":
        """Sub-batch of rows, trimmed to the columns those rows use (no padding waste)."""
        am = self.attention_mask[idx]
        cm = self.completion_mask[idx]
        p_used = int(am[:, :self.prompt_width].sum(dim=1).max().item())
        t_used = max(int(cm.sum(dim=1).max().item()), 1)
        start, end = self.prompt_width - p_used, self.prompt_width + t_used
        return PackedBatch(self.input_ids[idx, start:end], am[:, start:end], self.position_ids[idx, start:end],
                           self.completion_ids[idx, :t_used], cm[:, :t_used], p_used)


def pack(prompt_ids: list[list[int]], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
         pad_id: int) -> PackedBatch:
    n, t = completion_ids.shape
    p = max(len(x) for x in prompt_ids)
    ids = torch.full((n, p + t), pad_id, dtype=torch.long)
    am = torch.zeros((n, p + t), dtype=torch.long)
    for i, row in enumerate(prompt_ids):
        ids[i, p - len(row):p] = torch.tensor(row, dtype=torch.long)
        am[i, p - len(row):p] = 1
    ids[:, p:] = completion_ids
    am[:, p:] = completion_mask.long()
    pos = (am.cumsum(dim=1) - 1).clamp(min=0)
    return PackedBatch(ids, am, pos, completion_ids.long(), completion_mask.float(), p)


def _chunk_logprobs(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, temperature: float):
    """hidden [k, D], targets [k] -> log-probs [k] float32; holds one [k, V] float32 logits block."""
    logits = lm_head(hidden).float()
    if temperature != 1.0:
        logits.div_(temperature)  # in place: neither the cast nor the division needs its output in backward
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _chunk_entropy(hidden: torch.Tensor, lm_head: torch.nn.Module, temperature: float):
    logp = torch.log_softmax(lm_head(hidden).float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def token_logprobs(model, batch: PackedBatch, temperature: float = 1.0, chunk_tokens: int = 1024,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N, T] float32 of the completion tokens, 0 where the mask is 0 (and entropy [N, T]
    without grad if asked)."""
    # Through the model's own forward (so DDP/FSDP wrappers see it and sync gradients), keeping logits for
    # one position only; the completion logits are then made chunk by chunk from the final hidden states.
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=False, logits_to_keep=1, output_hidden_states=True)
    hidden = out.hidden_states[-1]
    lm_head = getattr(model, "module", model).get_output_embeddings()
    p, t = batch.prompt_width, batch.completion_ids.shape[1]
    hidden = hidden[:, p - 1:p - 1 + t]  # [N, T, D]: state before each completion token
    real = batch.completion_mask > 0  # [N, T]
    h, y = hidden[real], batch.completion_ids[real]  # [K, D], [K]: real tokens only
    grad = torch.is_grad_enabled() and h.requires_grad
    logps, ents = [], []
    for s in range(0, h.shape[0], chunk_tokens):
        hc, yc = h[s:s + chunk_tokens], y[s:s + chunk_tokens]
        if grad:
            logps.append(checkpoint(_chunk_logprobs, hc, lm_head, yc, temperature, use_reentrant=False))
        else:
            logps.append(_chunk_logprobs(hc, lm_head, yc, temperature))
        if with_entropy:
            with torch.no_grad():
                ents.append(_chunk_entropy(hc.detach(), lm_head, temperature))
    flat = torch.cat(logps) if logps else h.new_zeros(0, dtype=torch.float32)
    logp = flat.new_zeros(real.shape).masked_scatter(real, flat)
    ent = None
    if with_entropy:
        flat_ent = torch.cat(ents) if ents else flat.detach()
        ent = flat_ent.new_zeros(real.shape).masked_scatter(real, flat_ent)
    return logp, ent

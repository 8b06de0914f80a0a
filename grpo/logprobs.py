"""Per-token log-probabilities of sampled completions, computed without materialising [N, T, V] logits.

Sequences are laid out as ``[left-padded prompt | right-padded completion]`` so every completion starts
at column P (the prompt width); the hidden state at column P-1+t predicts completion token t. Logits are
computed in chunks of rows; with gradients, each chunk runs under activation checkpointing so only the
hidden states are kept and the chunk's logits are recomputed in backward.
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
    logits = lm_head(hidden).float() / temperature  # [n, T, V] for this chunk only
    logz = torch.logsumexp(logits, dim=-1)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz


def _chunk_entropy(hidden: torch.Tensor, lm_head: torch.nn.Module, temperature: float):
    logits = lm_head(hidden).float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def token_logprobs(model, batch: PackedBatch, temperature: float = 1.0, chunk_rows: int = 8,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N, T] of the completion tokens (and entropy [N, T] without grad if asked)."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    lm_head = model.get_output_embeddings()
    out = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
               use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    p, t = batch.prompt_width, batch.completion_ids.shape[1]
    hidden = hidden[:, p - 1:p - 1 + t]  # [N, T, D]: state before each completion token
    grad = torch.is_grad_enabled() and hidden.requires_grad
    logps, ents = [], []
    for s in range(0, hidden.shape[0], chunk_rows):
        h, y = hidden[s:s + chunk_rows], batch.completion_ids[s:s + chunk_rows]
        if grad:
            logps.append(checkpoint(_chunk_logprobs, h, lm_head, y, temperature, use_reentrant=False))
        else:
            logps.append(_chunk_logprobs(h, lm_head, y, temperature))
        if with_entropy:
            with torch.no_grad():
                ents.append(_chunk_entropy(h.detach(), lm_head, temperature))
    logp = torch.cat(logps) * batch.completion_mask
    ent = torch.cat(ents) * batch.completion_mask if with_entropy else None
    return logp, ent

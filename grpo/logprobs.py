"""Per-token log-probabilities of sampled completions, computed without materialising [N, T, V] logits.

Sequences are laid out as ``[left-padded prompt | right-padded completion]`` so every completion starts
at column P (the prompt width); the hidden state at column P-1+t predicts completion token t. Only the
hidden states of real completion tokens (mask 1) go through the LM head, in chunks of `chunk_tokens`
tokens, so neither padding nor the full [N, T, V] logits are ever computed: the largest transient is one
chunk's [chunk_tokens, V] float32 logits (1024 x 49152 x 4 B = 200 MB for SmolLM2). With gradients,
each chunk runs under activation checkpointing so only hidden states are kept and the chunk's logits are
recomputed in backward.

Shared prompts: the G completions of one prompt repeat that prompt G times in the padded layout. When a
micro-batch holds several rows with the same prompt, `token_logprobs` instead packs each distinct prompt
once, followed by the real tokens of each of its completions, with a block attention mask (a completion
sees the prompt and its own earlier tokens, never a sibling) and positions that restart after the prompt
for every completion. The maths is unchanged — each completion token is conditioned on exactly the same
context — and gradients from all G completions flow into the one shared prompt computation (their sum,
as in the padded layout). It needs an attention implementation that takes a custom 4D mask (sdpa) and a
model without our MLA/MoE adapters (routing replay is recorded per row); otherwise the padded layout is used.
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


@dataclass
class SharedLayout:
    """Distinct prompts packed once each, followed by their completions' real tokens.

    input_ids / position_ids: [U, L]; attention: [U, 1, L, L] bool (True = may attend);
    src_seq / src_pos: [K] where the hidden state predicting each real completion token sits, in the
    row-major order of `completion_mask > 0`.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention: torch.Tensor
    src_seq: torch.Tensor
    src_pos: torch.Tensor


def _can_share(model) -> bool:
    base = getattr(model, "module", model)
    cfg = getattr(base, "config", None)
    return (cfg is not None and getattr(cfg, "_attn_implementation", None) == "sdpa"
            and not getattr(cfg, "adapter", None))


def shared_layout(batch: PackedBatch, min_saving: float = 0.1) -> SharedLayout | None:
    """The shared-prompt layout of `batch`, or None when no prompt repeats, a completion mask is not a
    prefix of ones, or it would save less than `min_saving` of the padded layout's tokens."""
    p = batch.prompt_width
    am = batch.attention_mask[:, :p].bool()
    lens = batch.completion_mask.sum(dim=1).long()
    n, t = batch.completion_mask.shape
    if not torch.equal(batch.completion_mask > 0, torch.arange(t, device=lens.device)[None] < lens[:, None]):
        return None
    keys = [tuple(batch.input_ids[i, :p][am[i]].tolist()) for i in range(n)]
    groups: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    if len(groups) == n:
        return None
    seq_lens = [len(k) + int(lens[rows].sum()) for k, rows in groups.items()]
    width = max(seq_lens)
    if len(groups) * width > (1.0 - min_saving) * batch.input_ids.numel():
        return None
    dev = batch.input_ids.device
    u = len(groups)
    ids = torch.zeros((u, width), dtype=torch.long, device=dev)
    pos = torch.zeros((u, width), dtype=torch.long, device=dev)
    seg = torch.full((u, width), -1, dtype=torch.long, device=dev)  # -1 prompt, r = completion of row r, -2 pad
    src_seq = torch.zeros(int(lens.sum()), dtype=torch.long)
    src_pos = torch.zeros(int(lens.sum()), dtype=torch.long)
    where = {}  # row -> (sequence, first column of its completion)
    for g, (key, rows) in enumerate(groups.items()):
        lp = len(key)
        ids[g, :lp] = torch.tensor(key, dtype=torch.long)
        pos[g, :lp] = torch.arange(lp)
        col = lp
        for r in rows:
            k = int(lens[r])
            ids[g, col:col + k] = batch.completion_ids[r, :k]
            pos[g, col:col + k] = torch.arange(lp, lp + k)
            seg[g, col:col + k] = r
            where[r] = (g, col, lp)
            col += k
        seg[g, col:] = -2
    offset = 0
    for r in range(n):  # row-major order of the real completion tokens
        k = int(lens[r])
        if k == 0:
            continue
        g, col, lp = where[r]
        src_seq[offset:offset + k] = g
        src_pos[offset] = lp - 1  # the prompt's last state predicts the first completion token
        src_pos[offset + 1:offset + k] = torch.arange(col, col + k - 1)
        offset += k
    q = seg[:, :, None]
    kk = seg[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool, device=dev).tril()
    allowed = causal[None] & ((kk == -1) | ((q == kk) & (q >= 0)))
    allowed |= torch.eye(width, dtype=torch.bool, device=dev)[None] & (q == -2)  # pad rows see themselves
    return SharedLayout(ids, pos, allowed[:, None], src_seq.to(dev), src_pos.to(dev))


def _completion_states(model, batch: PackedBatch, real: torch.Tensor, share: bool) -> torch.Tensor:
    """Final hidden states [K, D] that predict the real completion tokens (row-major order)."""
    # Through the model's own forward (so DDP/FSDP wrappers see it and sync gradients), keeping logits for
    # one position only; the completion logits are then made chunk by chunk from the final hidden states.
    layout = shared_layout(batch) if share and _can_share(model) else None
    if layout is not None:
        out = model(input_ids=layout.input_ids, attention_mask=layout.attention, position_ids=layout.position_ids,
                    use_cache=False, logits_to_keep=1, output_hidden_states=True)
        return out.hidden_states[-1][layout.src_seq, layout.src_pos]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=False, logits_to_keep=1, output_hidden_states=True)
    p, t = batch.prompt_width, batch.completion_ids.shape[1]
    return out.hidden_states[-1][:, p - 1:p - 1 + t][real]  # state before each completion token


def token_logprobs(model, batch: PackedBatch, temperature: float = 1.0, chunk_tokens: int = 1024,
                   with_entropy: bool = False, share_prompts: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N, T] float32 of the completion tokens, 0 where the mask is 0 (and entropy [N, T]
    without grad if asked). `share_prompts`: compute each repeated prompt once (see the module docstring)."""
    lm_head = getattr(model, "module", model).get_output_embeddings()
    real = batch.completion_mask > 0  # [N, T]
    h = _completion_states(model, batch, real, share_prompts)  # [K, D]: real tokens only
    y = batch.completion_ids[real]  # [K]
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

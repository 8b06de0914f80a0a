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
model without our MoE adapter (routing replay is recorded per row; MLA is fine); otherwise the padded layout
is used.

Three forms of the shared layout (`attention=`):
- "rows" (RowsLayout): each distinct prompt once, left-padded to P, then its G completions each padded to
  T, [U, P + G·T], when every distinct prompt has the same number G of rows (GRPO micro-batches of whole
  groups). Attention is two small SDPA calls (`_rows_attention`): prompts causally among themselves, and
  each completion's T queries over [its prompt's keys | its own keys], so the scores computed are those of
  the padded layout without its G-fold prompt repeats. It is carried to the attention as a uint8 "plan"
  mask [U·G, 1, T, P + T] (HF's own masks are bool or float) through a wrapper of transformers' "sdpa"
  attention entry (`_route_layout_masks`).
- "dense": each prompt once followed by the real tokens of its completions, under a boolean [U, 1, L, L]
  mask from segment ids (prompt -1, completion of row r: r, padding -2; `_may_attend`), through SDPA's
  masked kernel over every L x L score.
- "flex": the same segments as a FlexAttention BlockMask (`torch.nn.attention.flex_attention`) whose kernel
  skips the 128 x 128 tiles no query may see; the layout is padded to a multiple of 128 columns.
"auto" (the default) is "rows" on CUDA (where it does not apply, e.g. groups of unequal size in a
micro-batch, the padded layout is used, as for an explicit "rows") and "dense" elsewhere. On an H100
(std-step, compiled layers, 2026-11-24) the update took 0.38-0.45 s with "rows" against 0.46-0.50 s with
"dense" in the same run (`python -m grpo.bench --skip-trl --update-attention rows|dense`); "flex" was
slower than "dense" there (forward + backward 0.384 vs 0.357 s, `python tools/flex_update_check.py`).
On the 2-core CPU, a
quickstart-sized micro-batch (2 prompts x 8 completions of 30-48 tokens, SmolLM2 shapes) took 1.87 + 4.76 s
(forward + backward) with "rows" against 1.66 + 4.43 s with "dense": there the attention is cheap and
padding every completion to the longest costs more than the dense mask saves.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

FLEX_BLOCK = 128  # FlexAttention's default (sparse) block size: BlockMask tiles are FLEX_BLOCK x FLEX_BLOCK


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
        """Sub-batch of rows, trimmed to the columns those rows use (no padding waste); views, not copies,
        when `idx` is every row in order (one micro-batch)."""
        n = self.input_ids.shape[0]
        if len(idx) == n and torch.equal(torch.as_tensor(idx, device="cpu"), torch.arange(n)):
            idx = slice(None)
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
    lens = torch.tensor([len(x) for x in prompt_ids], dtype=torch.long)
    p = int(lens.max())
    ids = torch.full((n, p + t), pad_id, dtype=torch.long)
    am = torch.zeros((n, p + t), dtype=torch.long)
    real = torch.arange(p) >= (p - lens)[:, None]  # [N, P]: left padding, each prompt at the right edge
    am[:, :p] = real.long()
    # row-major order of the mask's True cells is the rows' tokens one after another (no per-row copies)
    ids[:, :p][real] = torch.tensor([tok for row in prompt_ids for tok in row], dtype=torch.long)
    ids[:, p:] = completion_ids
    am[:, p:] = completion_mask.long()
    pos = (am.cumsum(dim=1) - 1).clamp(min=0)
    return PackedBatch(ids, am, pos, completion_ids.long(), completion_mask.float(), p)


def _chunk_logprobs(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, temperature: float,
                    entropy: list | None = None):
    """hidden [k, D], targets [k] -> log-probs [k] float32; holds one [k, V] float32 logits block. With
    `entropy` (an empty list), also appends the entropy [k] (no grad) taken from the same logits (one LM-head
    GEMM per chunk); a filled list is left alone, so the recomputation that activation checkpointing runs
    in backward does not compute it again (it saves no tensors for backward, so recomputation matches)."""
    logits = lm_head(hidden).float()
    if temperature != 1.0:
        logits.div_(temperature)  # in place: neither the cast nor the division needs its output in backward
    lse = torch.logsumexp(logits, dim=-1)
    if entropy is not None and not entropy:  # H = lse - Σ softmax · logits
        with torch.no_grad():
            entropy.append(lse - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1))
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse


@dataclass
class SharedLayout:
    """Distinct prompts packed once each, followed by their completions' real tokens.

    input_ids / position_ids / segments: [U, L]; segments: -1 a prompt token, r a token of row r's
    completion, -2 padding; src_seq / src_pos: [K] where the hidden state predicting each real completion
    token sits, in the row-major order of `completion_mask > 0`.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    src_seq: torch.Tensor
    src_pos: torch.Tensor

    def dense_mask(self) -> torch.Tensor:
        """[U, 1, L, L] bool, True where a query may attend a key (`_may_attend` at every pair)."""
        seg = self.segments
        col = torch.arange(seg.shape[1], device=seg.device)
        return _may_attend(seg[:, :, None], seg[:, None, :], col[:, None], col[None, :])[:, None]

    def block_mask(self):
        """The same rule as a FlexAttention BlockMask over [U, 1, L, L] (`create_block_mask` evaluates
        `_may_attend` as mask_mod to classify each 128 x 128 tile as empty, full or partial); built once per
        layout, shared by every layer. On CUDA through torch.compile (eager builds the whole L x L mask)."""
        from torch.nn.attention.flex_attention import create_block_mask

        seg = self.segments

        def mask_mod(b, h, q, k):
            return _may_attend(seg[b, q], seg[b, k], q, k)

        build = _compiled(create_block_mask) if seg.is_cuda else create_block_mask
        u, width = seg.shape
        return build(mask_mod, u, None, width, width, device=seg.device)


def _may_attend(seg_q, seg_k, q, k):
    """Whether the query at column q (segment seg_q) may attend the key at column k (segment seg_k), for
    broadcastable tensors: causal, and the key is a prompt token or in the query's own completion; a
    padding query sees only itself (its softmax stays finite). Both mask forms evaluate this."""
    own = (seg_k == -1) | ((seg_q == seg_k) & (seg_q >= 0))
    return ((q >= k) & own) | ((q == k) & (seg_q == -2))


def _can_share(model) -> bool:
    """sdpa attention (the shared layouts' masks reach it, `_route_layout_masks`) and no MoE adapter (routing
    replay aligns recorded routes with the rows of the padded layout). MLA layers are attention like any
    other here: their forward hands q, k, v and the mask to the same attention function."""
    base = getattr(model, "module", model)
    cfg = getattr(base, "config", None)
    return (cfg is not None and getattr(cfg, "_attn_implementation", None) == "sdpa"
            and set(getattr(cfg, "adapter", None) or {}) <= {"mla"})


def _prompt_groups(batch: PackedBatch) -> tuple[PackedBatch, torch.Tensor, dict[tuple, list[int]]] | None:
    """What both shared layouts start from: the batch on the host (the layouts are built there and moved
    once), completion lengths [N], and the rows grouped by their prompt's tokens (first-seen order); or
    None when a completion mask is not a prefix of ones."""
    p = batch.prompt_width
    cpu = batch.to("cpu")
    am = cpu.attention_mask[:, :p].bool()
    lens = cpu.completion_mask.sum(dim=1).long()
    n, t = cpu.completion_mask.shape
    if not torch.equal(cpu.completion_mask > 0, torch.arange(t)[None] < lens[:, None]):
        return None
    groups: dict[tuple, list[int]] = {}
    n_real = am.sum(dim=1)
    if torch.equal(am, torch.arange(p)[None] >= (p - n_real)[:, None]):  # left padding, as `pack` makes it:
        for i, (row, k) in enumerate(zip(cpu.input_ids[:, :p].tolist(), n_real.tolist())):  # a slice per row
            groups.setdefault(tuple(row[p - k:]), []).append(i)
        return cpu, lens, groups
    for i, row in enumerate(torch.where(am, cpu.input_ids[:, :p], -1).tolist()):  # one tolist, not one per row
        groups.setdefault(tuple(x for x in row if x != -1), []).append(i)
    return cpu, lens, groups


def _source_positions(lens: torch.Tensor, where: dict[int, tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """src_seq / src_pos [K] of a shared layout, in the row-major order of the real completion tokens.
    where[r] = (sequence, first column of row r's completion, column of its prompt's last token): that
    last prompt state predicts the first completion token, each completion state the next one."""
    src_seq = torch.zeros(int(lens.sum()), dtype=torch.long)
    src_pos = torch.zeros(int(lens.sum()), dtype=torch.long)
    offset = 0
    for r in range(len(lens)):
        k = int(lens[r])
        if k == 0:
            continue
        s, col, last = where[r]
        src_seq[offset:offset + k] = s
        src_pos[offset] = last
        src_pos[offset + 1:offset + k] = torch.arange(col, col + k - 1)
        offset += k
    return src_seq, src_pos


def shared_layout(batch: PackedBatch, min_saving: float = 0.1, multiple: int = 1) -> SharedLayout | None:
    """The shared-prompt layout of `batch`, its width padded up to a multiple of `multiple`, or None when
    no prompt repeats, a completion mask is not a prefix of ones, or it would save less than `min_saving`
    of the padded layout's tokens (counting the width padding)."""
    found = _prompt_groups(batch)
    if found is None:
        return None
    cpu, lens, groups = found
    if len(groups) == len(lens):
        return None
    seq_lens = [len(k) + int(lens[rows].sum()) for k, rows in groups.items()]
    width = -(-max(seq_lens) // multiple) * multiple
    if len(groups) * width > (1.0 - min_saving) * batch.input_ids.numel():
        return None
    u = len(groups)
    ids = torch.zeros((u, width), dtype=torch.long)
    pos = torch.zeros((u, width), dtype=torch.long)
    seg = torch.full((u, width), -1, dtype=torch.long)  # -1 prompt, r = completion of row r, -2 pad
    where = {}
    for g, (key, rows) in enumerate(groups.items()):
        lp = len(key)
        ids[g, :lp] = torch.tensor(key, dtype=torch.long)
        pos[g, :lp] = torch.arange(lp)
        col = lp
        for r in rows:
            k = int(lens[r])
            ids[g, col:col + k] = cpu.completion_ids[r, :k]
            pos[g, col:col + k] = torch.arange(lp, lp + k)
            seg[g, col:col + k] = r
            where[r] = (g, col, lp - 1)
            col += k
        seg[g, col:] = -2
    dev = batch.input_ids.device
    src_seq, src_pos = _source_positions(lens, where)
    return SharedLayout(ids.to(dev), pos.to(dev), seg.to(dev), src_seq.to(dev), src_pos.to(dev))


@dataclass
class RowsLayout:
    """Each distinct prompt once, left-padded to P, then its G completions each right-padded to T:
    input_ids / position_ids [U, P + G·T]. `plan` uint8 [U·G, 1, T, P + T], row u·G + j for completion j
    of prompt u: which of [the prompt's P keys | the completion's own T keys] each of its T queries may
    see (valid prompt tokens, and its own tokens causally). src_seq / src_pos: [K] as in SharedLayout."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    plan: torch.Tensor
    src_seq: torch.Tensor
    src_pos: torch.Tensor


def rows_layout(batch: PackedBatch, min_saving: float = 0.0, multiple: tuple[int, int] | None = None,
                device: torch.device | str | None = None) -> RowsLayout | None:
    """The regular shared-prompt layout of `batch`, or None when prompts do not repeat, not every distinct
    prompt has the same number G >= 2 of rows, a completion mask is not a prefix of ones, or it would save
    less than `min_saving` of the padded layout's tokens. It never holds more tokens than the padded
    layout (U·P + N·T against N·(P + T)) and its attention computes a subset of the padded layout's scores.

    `multiple` = (p, t): round the prompt width P up to a multiple of p and the completion width T up to a
    multiple of t (padding, as any row's own padding, is masked), and list every one of the N·T completion
    positions in src_seq / src_pos (row-major, padding included) instead of the real tokens only: a layout
    whose shapes depend only on (U, G, P, T), as CUDA graphs need (grpo.graphed). The layout is built on
    the host and returned on `device` (default: the batch's), its plan made there."""
    found = _prompt_groups(batch)
    if found is None or not found[2]:
        return None
    cpu, lens, groups = found
    g = len(lens) // len(groups)
    t = int(lens.max())
    if g < 2 or t == 0 or any(len(rows) != g for rows in groups.values()):
        return None
    pw = max(len(k) for k in groups)
    if multiple is not None:
        pw, t = -(-pw // multiple[0]) * multiple[0], -(-t // multiple[1]) * multiple[1]
    u, width = len(groups), pw + g * t
    if multiple is None and u * width > (1.0 - min_saving) * batch.input_ids.numel():
        return None
    members = torch.tensor(list(groups.values()), dtype=torch.long)  # [U, G] row ids, first-seen order
    first, rows = members[:, 0], members.flatten()
    # prompts: the last k columns of the batch's left-padded prompt part hold every real prompt token
    k = min(batch.prompt_width, pw)
    cols = slice(batch.prompt_width - k, batch.prompt_width)
    valid = torch.zeros((u, pw), dtype=torch.bool)
    valid[:, pw - k:] = cpu.attention_mask[first, cols].bool()
    p_ids = torch.zeros((u, pw), dtype=torch.long)
    p_ids[:, pw - k:] = torch.where(valid[:, pw - k:], cpu.input_ids[first, cols], 0)
    p_pos = torch.zeros((u, pw), dtype=torch.long)
    p_pos[:, pw - k:] = torch.where(valid[:, pw - k:], cpu.position_ids[first, cols], 0)
    comp = cpu.completion_ids[rows, :t]  # [U·G, <=t] in layout order
    if comp.shape[1] < t:
        comp = torch.cat([comp, comp.new_zeros(comp.shape[0], t - comp.shape[1])], dim=1)
    c_pos = valid.sum(dim=1)[:, None, None] + torch.arange(t)  # [U, 1, t]: positions go on after the prompt
    ids = torch.cat([p_ids, comp.view(u, g * t)], dim=1)
    pos = torch.cat([p_pos, c_pos.expand(u, g, t).reshape(u, g * t)], dim=1)
    # sources, row-major over the batch's rows: the prompt's last state, then the row's own states
    seq_of, j_of = torch.empty(len(lens), dtype=torch.long), torch.empty(len(lens), dtype=torch.long)
    seq_of[rows] = torch.arange(u).repeat_interleave(g)
    j_of[rows] = torch.arange(g).repeat(u)
    src_pos = (pw + j_of * t - 1)[:, None] + torch.arange(t)  # [N, t]
    src_pos[:, 0] = pw - 1
    src_seq = seq_of[:, None].expand(-1, t)
    if multiple is None:  # the real tokens only
        real = torch.arange(t) < lens[:, None]
        src_seq, src_pos = src_seq[real], src_pos[real]
    dev = batch.input_ids.device if device is None else torch.device(device)
    # plan [U·G, 1, t, P + t] built on the device: each row sees its prompt's real tokens, then itself causally
    v = valid.to(dev, torch.uint8)[:, None].expand(u, g, pw).reshape(u * g, 1, 1, pw).expand(-1, -1, t, -1)
    own = torch.ones(t, t, dtype=torch.uint8, device=dev).tril().expand(u * g, 1, t, t)
    plan = torch.cat([v, own], dim=-1)
    return RowsLayout(ids.to(dev), pos.to(dev), plan, src_seq.reshape(-1).to(dev), src_pos.reshape(-1).to(dev))


def _sdpa_gqa(query: torch.Tensor) -> bool:
    """Whether SDPA should take grouped-query K/V as they are (`enable_gqa`, torch >= 2.5) rather than with
    their heads repeated: on CPU (the math kernel) and on Hopper-class GPUs, where masked attention runs on
    cuDNN, which reads the grouped heads directly. Elsewhere a masked call cannot use the flash kernel and
    the fallbacks may not take grouped heads, so the heads are repeated as HF's repeat_kv does."""
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 5):
        return False
    return not query.is_cuda or torch.cuda.get_device_capability(query.device)[0] >= 9


def rows_prompt_mask(allowed: torch.Tensor, g: int) -> torch.Tensor:
    """[U, 1, P, P] bool: which prompt keys each prompt query of a rows layout may see, from its plan
    `allowed` [U·G, 1, T, P + T] (bool) and G: earlier real prompt tokens; a padding query sees only itself."""
    pw = allowed.shape[-1] - allowed.shape[-2]
    valid = allowed[::g, 0, 0, :pw]  # [U, P]: the prompt's real tokens (the first query of row u·G sees them)
    causal = torch.ones(pw, pw, dtype=torch.bool, device=allowed.device).tril()
    eye = torch.eye(pw, dtype=torch.bool, device=allowed.device)
    return ((causal[None] & valid[:, None, :]) | eye[None])[:, None]


def _rows_attention(query, key, value, plan, scale, gqa: bool | None = None) -> torch.Tensor:
    """Attention of the regular layout (RowsLayout): q [U, Hq, P + G·T, d], k, v [U, Hkv, P + G·T, d],
    plan [U·G, 1, T, P + T] -> [U, P + G·T, Hq, d] (HF's output layout).

    Two SDPA calls with small masks instead of one over a [U, L, L] mask that is mostly empty:
    the prompts attend causally among themselves ([U, Hq, P, P]); each completion's T queries attend to
    its own keys gathered next to its prompt's keys ([U·G, Hq, T, P + T], the prompt K/V copied to the G
    rows). Per layer that is U·G·T·(P + T) scores instead of U·(P + G·T)², ~6x fewer at std-step.

    The gathers work on [U, L, H, d] views (HF's layout before its transpose), and grouped-query K/V go
    to SDPA as they are where `_sdpa_gqa` says so (`gqa`: force either way). One compiled SmolLM2 layer,
    forward + backward at std-step shapes on an H100 (`python tools/rows_attention_bench.py`,
    2026-11-24): 3.58 ms of kernels with heads repeated on [U, H, L, d] views, 3.30 ms this way."""
    rows, _, t, pt = plan.shape
    pw = pt - t
    u, hq, _, d = query.shape
    hkv = key.shape[1]
    g, rep = rows // u, hq // hkv
    gqa = (_sdpa_gqa(query) if gqa is None else gqa) and rep > 1
    allowed = plan.bool()
    prompt_mask = rows_prompt_mask(allowed, g)
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [U, L, H, d]

    def heads(x):  # [..., Hkv, d] -> [..., Hq, d]: query head j reads KV head j // rep (HF's repeat_kv)
        if gqa or rep == 1:
            return x
        return x.unsqueeze(-2).expand(*x.shape[:-1], rep, d).reshape(*x.shape[:-2], hq, d)

    def sdpa(qq, kk, vv, mask):  # [B, S, H, d] in, [B, H, S, d] out
        extra = {"enable_gqa": True} if gqa else {}
        return F.scaled_dot_product_attention(qq.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2),
                                              attn_mask=mask, scale=scale, **extra)

    out_p = sdpa(q[:, :pw], heads(k[:, :pw]), heads(v[:, :pw]), prompt_mask)

    def with_prompt(x):  # [U, L, Hkv, d] -> [U·G, P + T, H, d]: the prompt's keys, then the row's own
        shared = x[:, None, :pw].expand(u, g, pw, hkv, d)
        own = x[:, pw:].reshape(u, g, t, hkv, d)
        return heads(torch.cat([shared, own], dim=2).reshape(rows, pw + t, hkv, d))

    out_c = sdpa(q[:, pw:].reshape(rows, t, hq, d), with_prompt(k), with_prompt(v), allowed)
    out_c = out_c.transpose(1, 2).reshape(u, g * t, hq, d)
    return torch.cat([out_p.transpose(1, 2), out_c], dim=1).contiguous()


@functools.cache
def _compiled_head():
    """torch.compile(_chunk_logprobs) with dynamic shapes (chunk sizes vary), made once."""
    return torch.compile(_chunk_logprobs, dynamic=True)


@functools.cache
def _compiled(fn):
    """torch.compile(fn), made once per function so its compiled graphs are kept and reused."""
    return torch.compile(fn)


def _flex_available() -> bool:
    try:
        importlib.import_module("torch.nn.attention.flex_attention")
    except ImportError:
        return False
    return True


def _route_layout_masks() -> None:
    """Make transformers' "sdpa" attention serve the shared layouts' masks (idempotent): a BlockMask goes to
    FlexAttention, a uint8 RowsLayout plan to `_rows_attention`, any other mask to SDPA unchanged.

    HF attention layers look their attention function up at every forward, by `config._attn_implementation`,
    in transformers' AttentionInterface; a 4-D BlockMask given as `attention_mask` reaches them unchanged
    (masking_utils `_preprocess_mask_arguments` returns 4-D masks as they are; transformers 5.17 and 5.23).
    So the global "sdpa" entry is replaced once by `_sdpa_with_layouts` around it: the two layout masks, which
    only the shared-layout calls pass, go to their attention and every other mask to the wrapped function
    with the same arguments. Nothing of a model changes (config, modules, graphs compiled for tensor masks), it holds
    through compiled layers, DDP wrappers and gradient checkpointing, and the rollout engine never calls HF
    attention. A switch of `config._attn_implementation` around the forward would not hold: gradient
    checkpointing re-runs the layers in backward, after the switch is undone, and sdpa gets the BlockMask."""
    from transformers import AttentionInterface

    sdpa = AttentionInterface()["sdpa"]  # a fresh instance has no local entries: the global one
    if not getattr(sdpa, "routes_layout_masks", False):
        AttentionInterface.register("sdpa", _sdpa_with_layouts(sdpa))


def _sdpa_with_layouts(sdpa):
    """An HF attention function: FlexAttention when the mask is a BlockMask, `_rows_attention` when it is a
    uint8 RowsLayout plan (HF's own masks are bool or float), else `sdpa` unchanged."""
    from torch.nn.attention.flex_attention import BlockMask

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        plan = isinstance(attention_mask, torch.Tensor) and attention_mask.dtype == torch.uint8
        if not (plan or isinstance(attention_mask, BlockMask)):
            return sdpa(module, query, key, value, attention_mask, *args, **kwargs)
        if kwargs.get("dropout", 0.0) > 0 or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
            raise ValueError("the shared-prompt layouts have no attention dropout, logit softcap or sinks")
        if plan:
            return _rows_attention(query, key, value, attention_mask, kwargs.get("scaling")), None
        return _flex_attention(query, key, value, attention_mask, kwargs.get("scaling")), None

    attention.routes_layout_masks = True
    return attention


def _flex_attention(query, key, value, block_mask, scale) -> torch.Tensor:
    """FlexAttention of q [B, Hq, L, d] over k, v [B, Hkv, L, d] -> [B, L, Hq, d] (HF's output layout),
    grouped-query heads by `enable_gqa` (K/V not repeated). On CUDA a fused Triton kernel: traced into
    the layer's graph inside a compiled layer, else through one torch.compile of flex_attention; on CPU
    the unfused eager reference."""
    from torch.nn.attention.flex_attention import flex_attention

    inline = torch.compiler.is_compiling() or not query.is_cuda
    flex = flex_attention if inline else _compiled(flex_attention)
    out = flex(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous()


def _completion_states(model, batch: PackedBatch, real: torch.Tensor, share: bool, attention: str) -> torch.Tensor:
    """Final hidden states [K, D] that predict the real completion tokens (row-major order); the completion
    logits are then made chunk by chunk from them."""
    if attention == "auto":  # measured: rows wins on an H100, dense on the CPU (module docstring)
        attention = "rows" if batch.input_ids.is_cuda else "dense"
    if not (share and _can_share(model)):
        layout = None
    elif attention == "rows":
        layout = rows_layout(batch)  # None (groups of unequal size, ...): the padded layout below
    else:
        layout = shared_layout(batch, multiple=FLEX_BLOCK if attention == "flex" else 1)
    if layout is not None:
        if isinstance(layout, RowsLayout):
            _route_layout_masks()
            mask = layout.plan
        elif attention == "flex":
            _route_layout_masks()
            mask = layout.block_mask()
        else:
            mask = layout.dense_mask()
        return layout_states(model, layout.input_ids, layout.position_ids, mask, layout.src_seq, layout.src_pos)
    h = final_states(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids)
    p, t = batch.prompt_width, batch.completion_ids.shape[1]
    return h[:, p - 1:p - 1 + t][real]  # state before each completion token


def final_states(model, **inputs) -> torch.Tensor:
    """The final (normed) hidden states [B, L, D] of `model(**inputs)`, through the model's own forward (so
    DDP/FSDP wrappers see it and sync gradients) with logits kept for one position only. They are taken
    by a forward hook on the decoder, not by `output_hidden_states`, which keeps every layer's output
    alive until the forward returns: (layers + 1) x [B, L, D] in a no-grad pass (the old and reference
    log-probs), and with gradient checkpointing the layer inputs that `grpo.graphed.checkpoints_in` moves
    out of the way."""
    base = getattr(model, "module", model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if decoder is None or decoder is base:  # no separate decoder module to hook
        return model(**inputs, use_cache=False, logits_to_keep=1, output_hidden_states=True).hidden_states[-1]
    box: list[torch.Tensor] = []
    hook = decoder.register_forward_hook(lambda module, args, out: box.append(out[0]))
    try:
        model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    return box[-1]


def layout_states(model, input_ids, position_ids, mask, src_seq, src_pos) -> torch.Tensor:
    """Final hidden states [K, D] at (src_seq, src_pos) of a shared layout's forward pass (its `mask`: the
    dense bool mask, a BlockMask or a rows plan), through the model's own forward (`final_states`; the
    completion logits are made chunk by chunk from these states)."""
    return final_states(model, input_ids=input_ids, attention_mask=mask, position_ids=position_ids)[src_seq, src_pos]


def token_logprobs(model, batch: PackedBatch, temperature: float = 1.0, chunk_tokens: int = 1024,
                   with_entropy: bool = False, share_prompts: bool = True, attention: str = "auto",
                   compile_head: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N, T] float32 of the completion tokens, 0 where the mask is 0 (and entropy [N, T]
    without grad if asked). `share_prompts`: compute each repeated prompt once; `attention`: the shared
    layout's form, "rows", "dense", "flex" or "auto" (see the module docstring; the padded layout always
    runs the model's own attention). Torch refuses FlexAttention backward on CPU (no CPU kernel for it).
    `compile_head`: run each chunk's LM head + log-softmax through torch.compile (the trainer sets it with
    `model.compile`): inductor reads the bf16 logits in fused reductions instead of materialising fp32
    copies; on an H100 std-step 0.866 -> 0.817 s/step and peak 4.14 -> 3.88 GiB in the same invocation
    (`python -m grpo.bench --skip-trl [--compile-logprobs]`, 2026-11-24)."""
    if attention not in ("auto", "rows", "dense", "flex"):
        raise ValueError(f"attention must be 'auto', 'rows', 'dense' or 'flex', got {attention!r}")
    if attention == "flex" and not _flex_available():
        raise ValueError("attention='flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
    lm_head = getattr(model, "module", model).get_output_embeddings()
    real = batch.completion_mask > 0  # [N, T]
    h = _completion_states(model, batch, real, share_prompts, attention)  # [K, D]: real tokens only
    flat, flat_ent = head_logprobs(h, batch.completion_ids[real], lm_head, temperature, chunk_tokens,
                                   with_entropy, compile_head)
    logp = flat.new_zeros(real.shape).masked_scatter(real, flat)
    ent = None if flat_ent is None else flat_ent.new_zeros(real.shape).masked_scatter(real, flat_ent)
    return logp, ent


def head_logprobs(h: torch.Tensor, y: torch.Tensor, lm_head: torch.nn.Module, temperature: float,
                  chunk_tokens: int = 1024, with_entropy: bool = False,
                  compile_head: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [K] float32 of targets y [K] under the LM head applied to final hidden states h [K, D],
    `chunk_tokens` rows at a time (each chunk under activation checkpointing when h needs gradients, so its
    [chunk, V] logits are recomputed in backward instead of kept); and the entropies [K] (no grad) if asked."""
    grad = torch.is_grad_enabled() and h.requires_grad
    head = _compiled_head() if compile_head else _chunk_logprobs
    logps, ents = [], []
    for s in range(0, h.shape[0], chunk_tokens):
        hc, yc = h[s:s + chunk_tokens], y[s:s + chunk_tokens]
        ent_box = [] if with_entropy else None
        if grad:  # the chunk's logits are recomputed in backward, never kept
            logps.append(checkpoint(head, hc, lm_head, yc, temperature, ent_box, use_reentrant=False))
        else:
            logps.append(head(hc, lm_head, yc, temperature, ent_box))
        if with_entropy:
            ents.append(ent_box[0])
    flat = torch.cat(logps) if logps else h.new_zeros(0, dtype=torch.float32)
    if not with_entropy:
        return flat, None
    return flat, (torch.cat(ents) if ents else flat.detach())

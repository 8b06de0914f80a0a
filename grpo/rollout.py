"""Sampling: the one small interface every rollout backend implements, and the HF `generate` backend.

A backend turns B prompts (token ids) into B*G completions and returns a `RolloutBatch`. Rows are
grouped by prompt: row ``i`` belongs to prompt ``i // group_size`` (``group[i]``). The trainer never
branches on the backend; the fast static-cache engine (grpo/engine) implements the same `Sampler`.
"""
from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """temperature == 0 means greedy. top_k == 0 and top_p == 1.0 disable those filters.

    min_new_tokens forces exactly that many tokens before EOS may end a row (benchmarks use
    min_new_tokens == max_new_tokens).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_new_tokens: int = 0


@dataclass
class RolloutBatch:
    """Completions of one sampling call. N = num_prompts * group_size rows, T = longest completion.

    prompt_ids:      list of N lists of prompt token ids (unpadded; rows of one group share a prompt)
    completion_ids:  [N, T] long, right-padded with pad_token_id after the end of each completion
    completion_mask: [N, T] float 1/0: real completion tokens (the EOS token included)
    logprobs:        [N, T] float32 log-prob of each sampled token under the sampling distribution
                     (logits / temperature, before top-p/top-k), 0 where mask is 0; None if the
                     backend does not provide them
    texts:           N decoded completions (special tokens removed): a list, or LazyTexts
    group:           [N] long, prompt index of each row
    truncated:       [N] bool, True where the row hit max_new_tokens without emitting EOS
    routes:          MoE experts chosen while sampling (`grpo.adapters.RecordedRoutes`, rows in this
                     order) for routing replay in the update; None for dense models or replay off
    """

    prompt_ids: list[list[int]]
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor | None
    texts: Sequence[str]
    group: torch.Tensor
    truncated: torch.Tensor
    routes: Any = None

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum().item())


def real_token_rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """The real tokens of each row (`mask` > 0) as lists: one `tolist` of the whole table when every mask
    row is a prefix of ones (as samplers return them), else row by row."""
    m = mask > 0
    lens = m.sum(dim=1)
    if bool((m == (torch.arange(m.shape[1]) < lens[:, None])).all()):
        return [row[:n] for row, n in zip(ids.tolist(), lens.tolist())]
    return [r[k].tolist() for r, k in zip(ids, m)]


def rust_batch_decode(tokenizer):
    """The Rust `tokenizers` decode_batch behind a transformers fast tokenizer when it gives exactly what
    `tokenizer.batch_decode(rows, skip_special_tokens=True)` gives (transformers decodes row by row with
    it, then cleans up spaces only when `clean_up_tokenization_spaces` is set, which transformers 5 ignores
    for BPE models), else None. It has no per-row Python and releases the GIL, so it can run on a thread
    while the trainer queues the update (128 x 256 tokens on this 2-core CPU: 4.1 ms against 10-12 ms, and a
    Python loop beside it is not slowed; `python tools/detok_bench.py`)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "decode_batch"):
        return None
    decode = getattr(type(tokenizer), "_decode", None)
    base = next((c for c in type(tokenizer).__mro__ if c.__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")),
                None)
    if base is None or decode is not base.__dict__.get("_decode"):
        return None  # a subclass decodes in its own way
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        bpe_skip = getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", None)
        if bpe_skip is None or bpe_skip or type(backend.model).__name__ != "BPE":
            return None  # the clean-up would run
    return lambda rows: backend.decode_batch(rows, skip_special_tokens=True)


@functools.cache
def _detokenizer(pid: int) -> ThreadPoolExecutor:
    """One background thread for LazyTexts' Rust decoding per process (called with os.getpid(): a forked
    child gets its own, the parent's thread does not exist there)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-detokenize")


class LazyTexts(Sequence):
    """The decoded completions of token rows (real tokens by `mask`, special tokens removed). A sampler
    returns it before the texts exist: with a fast tokenizer whose Rust decoder gives batch_decode's
    exact output (`rust_batch_decode`), decoding starts at once on a background thread, without the GIL,
    while the trainer queues the update's forward pass; otherwise it decodes on first use, still after
    the forward is queued. Both samplers return it; `token_rows` are the real tokens it decodes."""

    def __init__(self, tokenizer, ids: torch.Tensor, mask: torch.Tensor):
        self.token_rows = real_token_rows(ids, mask)
        self._tok = tokenizer
        self._texts: list[str] | None = None
        self._future = None
        fast = rust_batch_decode(tokenizer)
        if fast is not None:
            self._future = _detokenizer(os.getpid()).submit(fast, self.token_rows)

    def _decoded(self) -> list[str]:
        if self._texts is None:
            if self._future is not None:
                self._texts = self._future.result()
            else:
                self._texts = self._tok.batch_decode(self.token_rows, skip_special_tokens=True)
            self._future = None
        return self._texts

    def __getitem__(self, i):
        return self._decoded()[i]

    def __len__(self) -> int:
        return len(self.token_rows)

    def __eq__(self, other) -> bool:
        return list(self._decoded()) == list(other)

    def __repr__(self) -> str:
        return repr(self._decoded())


class Sampler(Protocol):
    def generate(self, prompt_ids: list[list[int]], group_size: int, params: SamplingParams) -> RolloutBatch:
        ...


def finish_rows(seqs: torch.Tensor, eos_ids: set[int], pad_id: int, max_new_tokens: int):
    """Cut generated rows at their first EOS. seqs: [N, T] new tokens only.

    Returns (ids [N, T'] padded with pad_id after EOS, mask [N, T'] incl. the EOS token, truncated [N]).
    """
    n, t = seqs.shape
    is_eos = torch.zeros_like(seqs, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= seqs == e
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full((n,), t, device=seqs.device))
    lengths = torch.clamp(first + has_eos.long(), max=t)  # keep the EOS token itself
    pos = torch.arange(t, device=seqs.device).unsqueeze(0)
    mask = pos < lengths.unsqueeze(1)
    ids = torch.where(mask, seqs, torch.full_like(seqs, pad_id))
    keep = int(lengths.max().item()) if n else 0
    truncated = ~has_eos & (lengths >= max_new_tokens)
    return ids[:, :keep], mask[:, :keep].float(), truncated


def context_length(model) -> int | None:
    """The longest prompt + completion `model` (or its config) was built for: `max_position_embeddings`, None
    when the config does not say."""
    n = getattr(getattr(model, "config", model), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def check_fits(prompt_len: int, max_new_tokens: int, limit: int | None) -> None:
    """A sampler's own guard: prompt + max_new_tokens must fit `limit` (its `max_seq_len`, by default the model's
    context length). The stages apply `check_prompt_lengths` at load time, so a run never gets here."""
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise ValueError(f"a prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} = "
                         f"{prompt_len + max_new_tokens} > {limit}, the sampler's max_seq_len (default: the model's "
                         "context length, config.max_position_embeddings); shorten the prompt or max_new_tokens")


def check_prompt_lengths(prompt_ids: list[list[int]], examples, max_new_tokens: int, context: int | None,
                         max_prompt_tokens: int | None, where: str) -> None:
    """The prompt-length policy of every stage that samples, applied to a whole data set before the model loads
    (`prompt_ids` untruncated, as `encode_prompts` gives them without max_prompt_tokens):

    - `data.max_prompt_tokens` unset: a prompt whose length + max_new_tokens exceeds the model's context length
      is a DataError naming the first such example, its length, the limit and how many such prompts there are.
    - set: prompts longer than it are left-truncated to it by `encode_prompts` (the end of the prompt, where
      the question and the generation prompt are, is kept, as TRL's GRPO `max_prompt_length` truncates); a
      warning says how many. max_prompt_tokens + max_new_tokens past the context length is a ConfigError.

    Unset is the default because a silently shortened prompt changes the task (a system prompt or the start of
    a question lost); truncation is there for data sets with a few outliers, opted into by name.
    """
    from grpo.config import ConfigError
    from grpo.data import DataError

    if max_prompt_tokens is not None:
        if context is not None and max_prompt_tokens + max_new_tokens > context:
            raise ConfigError(f"data.max_prompt_tokens ({max_prompt_tokens}) + max_new_tokens ({max_new_tokens}) = "
                              f"{max_prompt_tokens + max_new_tokens} > {context}, the model's context length "
                              "(config.max_position_embeddings)")
        cut = sum(len(p) > max_prompt_tokens for p in prompt_ids)
        if cut:
            log.warning("%s: %d of %d prompts are longer than data.max_prompt_tokens = %d tokens (longest %d): "
                        "they are left-truncated to it", where, cut, len(prompt_ids), max_prompt_tokens,
                        max(len(p) for p in prompt_ids))
        return
    if context is None:
        return
    over = [i for i, p in enumerate(prompt_ids) if len(p) + max_new_tokens > context]
    if over:
        i = over[0]
        raise DataError(f"{where}: example {examples[i].id!r} has a prompt of {len(prompt_ids[i])} tokens; + "
                        f"max_new_tokens {max_new_tokens} = {len(prompt_ids[i]) + max_new_tokens} > {context}, the "
                        f"model's context length ({len(over)} of {len(prompt_ids)} prompts are that long; longest "
                        f"{max(len(prompt_ids[j]) for j in over)} tokens). Set data.max_prompt_tokens to left-truncate "
                        "them, lower max_new_tokens, or filter the data")


def check_prompts(model_cfg, model, tokenizer, examples, data_cfg, max_new_tokens: int,
                  where: str) -> None:
    """The prompt-length policy (`grpo.rollout.check_prompt_lengths`) for a stage that samples, before its model
    loads (`model`: one passed in, or None to read the context length from the checkpoint's config)."""
    from grpo.models import context_length_of

    ids = encode_prompts(tokenizer, examples, data_cfg.template, data_cfg.assistant_prefix)[1]
    check_prompt_lengths(ids, examples, max_new_tokens, context_length_of(model_cfg, model),
                         data_cfg.max_prompt_tokens, where)


class HFSampler:
    """Backend on `transformers` `generate` (dynamic KV cache, left-padded prompts).

    Simple and works for any causal LM; each of the G samples re-runs the prompt prefill. Returns no
    sampling logprobs (holding generate's per-step [N, V] logits would cost N*T*V floats); the trainer
    computes old/reference log-probs with a forward pass. max_seq_len caps prompt + max_new_tokens (None:
    the model's context length), as the engine's does.
    """

    def __init__(self, model, tokenizer, batch_size: int = 256, max_seq_len: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len if max_seq_len is not None else context_length(model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], group_size: int, params: SamplingParams) -> RolloutBatch:
        rows = [p for p in prompt_ids for _ in range(group_size)]
        group = torch.arange(len(prompt_ids)).repeat_interleave(group_size)
        chunks = [self._generate_chunk(rows[i:i + self.batch_size], params)
                  for i in range(0, len(rows), self.batch_size)]
        width = max(c[0].shape[1] for c in chunks)
        ids = torch.cat([_pad_right(c[0], width, self.pad_id) for c in chunks])
        mask = torch.cat([_pad_right(c[1], width, 0) for c in chunks])
        truncated = torch.cat([c[2] for c in chunks])
        texts = LazyTexts(self.tokenizer, ids, mask)
        return RolloutBatch(prompt_ids=rows, completion_ids=ids, completion_mask=mask, logprobs=None,
                            texts=texts, group=group, truncated=truncated)

    def _generate_chunk(self, rows: list[list[int]], params: SamplingParams):
        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        check_fits(width, params.max_new_tokens, self.max_seq_len)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            input_ids[i, width - len(r):] = torch.tensor(r)
            attn[i, width - len(r):] = 1
        greedy = params.temperature == 0
        kwargs = dict(max_new_tokens=params.max_new_tokens, min_new_tokens=params.min_new_tokens,
                      do_sample=not greedy, pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids),
                      return_dict_in_generate=True)
        if not greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device), **kwargs)
        self.model.train(was_training)
        new = out.sequences[:, width:].cpu()
        ids, mask, truncated = finish_rows(new, self.eos_ids, self.pad_id, params.max_new_tokens)
        return ids, mask, truncated

def _pad_right(x: torch.Tensor, width: int, value) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.full((x.shape[0], width - x.shape[1]), value, dtype=x.dtype)
    return torch.cat([x, pad], dim=1)


def encode_prompts(tokenizer, examples, template: str, assistant_prefix: str = "",
                   max_prompt_tokens: int | None = None):
    """Examples -> (chat messages per example, prompt token ids per example); prompts longer than
    `max_prompt_tokens` keep their last max_prompt_tokens tokens (`check_prompt_lengths` has said how many)."""
    from grpo.data.templates import render, to_messages

    chats = [to_messages(e, template) for e in examples]
    texts = [render(tokenizer, c, assistant_prefix) for c in chats]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max_prompt_tokens is not None:
        ids = [p[-max_prompt_tokens:] if len(p) > max_prompt_tokens else p for p in ids]
    return chats, ids


def make_sampler(backend: str, model, tokenizer, batch_size: int, *, dtype="auto"):
    """The configured `Sampler`. "engine" is imported lazily (it may need CUDA-specific pieces); `dtype` is the
    engine's compute dtype ("auto": bf16 on CUDA for fp32 weights, the weights' dtype elsewhere; the HF sampler
    runs in the weights' dtype). Neither needs to be told the prompt lengths: the engine sizes its cache from
    each call, and both refuse only prompt + max_new_tokens past the model's context length."""
    if backend == "hf":
        return HFSampler(model, tokenizer, batch_size=batch_size)
    if backend == "engine":
        from grpo.engine import EngineSampler

        return EngineSampler(model, tokenizer, max_batch=batch_size, dtype=dtype)
    raise ValueError(f"unknown sampling backend {backend!r}")

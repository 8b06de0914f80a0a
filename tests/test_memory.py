"""The update's memory policy (grpo.memory): micro-batches in rows and tokens, auto sizing, and a run that
survives a simulated out-of-memory error with the result of a run that used the smaller size from the start."""
import warnings

import pytest
import torch

from grpo.memory import Limits, auto_token_limit, halve, is_out_of_memory, plan_micro_batches


def _rows(micro):
    return [m.tolist() for m in micro]


def test_whole_groups_longest_first_within_rows():
    lengths = torch.tensor([1, 1, 5, 5, 3, 3, 2, 2])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    micro = plan_micro_batches(lengths, torch.ones(8, dtype=torch.long), Limits(rows=4), groups)
    assert _rows(micro) == [[2, 3, 4, 5], [6, 7, 0, 1]]


def test_token_limit_counts_rows_times_longest_prompt_plus_completion():
    lengths = torch.tensor([6, 6, 2, 2, 2, 2])
    prompts = torch.tensor([4, 4, 2, 2, 2, 2])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    # group 0 costs 2 x (4 + 6) = 20 tokens, groups 1 and 2 cost 2 x 4 = 8 each; together 4 x 4 = 16
    micro = plan_micro_batches(lengths, prompts, Limits(rows=16, tokens=20), groups)
    assert _rows(micro) == [[0, 1], [2, 3, 4, 5]]
    micro = plan_micro_batches(lengths, prompts, Limits(rows=16, tokens=15), groups)
    # a group over the limit: rows one by one, longest first (1 row of group 0 costs 10)
    assert _rows(micro) == [[0], [1], [2, 3, 4], [5]]
    assert sorted(sum(_rows(micro), [])) == list(range(6))


def test_no_token_limit_keeps_the_row_cut():
    lengths = torch.tensor([3, 9, 1, 4, 4])
    micro = plan_micro_batches(lengths, torch.full((5,), 100), Limits(rows=2, tokens=0))
    assert _rows(micro) == [[1, 3], [4, 0], [2]]


def test_halve_takes_half_of_the_largest_micro_batch():
    lengths, prompts = torch.tensor([8, 8, 8, 2]), torch.tensor([2, 2, 2, 2])
    micro = [torch.tensor([0, 1, 2]), torch.tensor([3])]  # the first costs 3 x (2 + 8) = 30 tokens
    assert halve(micro, lengths, prompts, Limits(rows=3, tokens=40)) == Limits(rows=1, tokens=15)
    assert halve(micro, lengths, prompts, Limits(rows=3)) == Limits(rows=1, tokens=0)  # rows-only stays so
    assert halve([torch.tensor([0]), torch.tensor([3])], lengths, prompts, Limits(rows=1)) is None


def test_out_of_memory_recognised_also_when_wrapped():
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(oom)
    try:
        try:
            raise oom
        except RuntimeError as inner:
            raise RuntimeError("CUDA graph capture failed") from inner
    except RuntimeError as outer:
        assert is_out_of_memory(outer)
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocator's error type


def test_auto_token_limit():
    # 0.8 x 10 GiB - 2 GiB fixed = 6 GiB at 64 KiB per token -> 98,304 tokens, capped at 65,536
    assert auto_token_limit(10 * 2**30, 64 * 2**10, 2 * 2**30) == 65536
    assert auto_token_limit(10 * 2**30, 64 * 2**10, 2 * 2**30, cap=10**9) == 98304
    assert auto_token_limit(1 * 2**30, 64 * 2**10, 2 * 2**30) == 1024  # nothing left: the floor


# ---------------------------------------------------------------- the trainer under a simulated OOM

def _oom_above(rows: int, after: int):
    """A token_logprobs stand-in that raises torch.OutOfMemoryError from the `after`-th call on a micro-batch
    of more than `rows` rows (the calls before it run, and their backward accumulates gradients)."""
    import grpo.train as train_mod

    real, big = train_mod.token_logprobs, [0]

    def patched(model, batch, *a, **k):
        if batch.completion_ids.shape[0] > rows:
            big[0] += 1
            if big[0] >= after:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, batch, *a, **k)
    return patched


def _run(tmp_path, tok, name, micro_rows, patch=None, monkeypatch=None, **over):
    import grpo.train as train_mod
    from grpo.testing import tiny_model
    from test_train_e2e import tiny_cfg

    if patch is not None:
        monkeypatch.setattr(train_mod, "token_logprobs", patch)
    cfg = tiny_cfg(tmp_path / name, **{"optim.steps": 2, "optim.micro_batch_size": micro_rows, **over})
    model = tiny_model(tok)
    state = train_mod.setup(cfg, model=model, tokenizer=tok)
    stats = [train_mod.train_step(state, train_mod.next_prompts(state))[0] for _ in range(2)]
    return model, stats, state


def test_oom_halves_the_micro_batch_and_matches_the_smaller_run(tmp_path, tok, monkeypatch):
    """32 rows (4 prompts x 8) in micro-batches of 16: the second one raises OOM after the first one's backward
    has accumulated gradients. The step zeroes them, halves to 8 rows and runs again; the halved size sticks.
    Weights and losses equal a run with micro-batches of 8 rows from the start, bit for bit."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, stats_a, state_a = _run(tmp_path, tok, "a", 16, _oom_above(8, after=2), monkeypatch)
    monkeypatch.undo()
    b, stats_b, _ = _run(tmp_path, tok, "b", 8)
    assert [s.extra["grpo/update/oom_retries"] for s in stats_a] == [1, 0]
    assert [s.extra["grpo/update/micro_batches"] for s in stats_a] == [4, 4]
    assert state_a.micro_limits.rows == 8
    assert any("out of memory in the policy update" in str(w.message) for w in caught)
    assert [s.loss for s in stats_a] == [s.loss for s in stats_b]
    assert [s.grad_norm for s in stats_a] == [s.grad_norm for s in stats_b]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_oom_not_retried_when_off_or_at_one_row(tmp_path, tok, monkeypatch):
    (tmp_path / "off").mkdir()
    with pytest.raises(torch.OutOfMemoryError):
        _run(tmp_path, tok, "off", 16, _oom_above(8, after=1), monkeypatch, **{"optim.oom_retry": False})
    monkeypatch.undo()
    (tmp_path / "one").mkdir()
    with pytest.raises(torch.OutOfMemoryError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _run(tmp_path, tok, "one", 2, _oom_above(0, after=1), monkeypatch)  # every micro-batch fails


def test_eager_update_keeps_its_checkpoints_in_the_engine_cache(tmp_path, tok):
    """Without CUDA graphs, gradient checkpoints of the update also go into the engine's idle KV cache: the
    cache's contents change during the update, and the weights come out as without it."""
    import grpo.train as train_mod
    from grpo.testing import tiny_model
    from test_train_e2e import tiny_cfg

    results = []
    for use_cache in (True, False):
        (tmp_path / str(use_cache)).mkdir()
        cfg = tiny_cfg(tmp_path / str(use_cache), **{"optim.steps": 1, "sampling.backend": "engine"})
        cfg.model.gradient_checkpointing = True
        model = tiny_model(tok)
        state = train_mod.setup(cfg, model=model, tokenizer=tok)
        examples = train_mod.next_prompts(state)
        chats, rollout = train_mod.sample(state, examples)
        cache = state.scratch().clone()
        if not use_cache:
            state.scratch = None
        train_mod.policy_update(state, rollout, torch.linspace(-1, 1, len(rollout.group)))
        assert torch.equal(cache, state.sampler.scratch()) != use_cache
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("share", [True, False])
def test_no_grad_logprobs_keep_no_layer_outputs(tok, share):
    """The old/reference log-prob passes (no grad) hold one layer's output at a time: when the final norm runs,
    the outputs of the layers before the last are freed (output_hidden_states would keep all of them)."""
    import weakref

    from grpo.logprobs import pack, token_logprobs
    from grpo.testing import tiny_model

    model = tiny_model(tok, num_hidden_layers=4)
    alive, refs = [], []
    for layer in model.model.layers:
        layer.register_forward_hook(lambda m, a, out: refs.append(weakref.ref(out[0] if isinstance(out, tuple) else out)))
    model.model.norm.register_forward_pre_hook(lambda m, a: alive.append(sum(r() is not None for r in refs[:-1])))
    batch = pack([[5, 6, 7]] * 4, torch.randint(3, 90, (4, 6)), torch.ones(4, 6), tok.pad_token_id)
    with torch.no_grad():
        lp, _ = token_logprobs(model, batch, share_prompts=share)
    assert lp.shape == (4, 6) and len(refs) == 4 and alive == [0]


def test_adamw_8bit_trains_and_resumes(tmp_path, tok):
    """optim.optimizer: adamw_8bit (torchao's AdamW8bit): a step changes the weights, its moments are 8-bit
    state tensors, the LR schedule drives its tensor learning rate, and a checkpoint round-trips them."""
    pytest.importorskip("torchao.optim")
    import grpo.train as train_mod
    from grpo.testing import tiny_model
    from test_train_e2e import tiny_cfg

    cfg = tiny_cfg(tmp_path, **{"optim.steps": 2, "optim.optimizer": "adamw_8bit", "optim.warmup_steps": 2})
    model = tiny_model(tok)
    before = [p.detach().clone() for p in model.parameters()]
    state = train_mod.setup(cfg, model=model, tokenizer=tok)
    lr = state.optimizer.param_groups[0]["lr"]  # a tensor in AdamW8bit, filled in place by the schedule
    assert float(lr) == pytest.approx(cfg.optim.lr / 2)  # warm-up: step 1 of 2
    stats, _ = train_mod.train_step(state, train_mod.next_prompts(state))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())) and stats.grad_norm > 0
    moments = state.optimizer.state[model.model.layers[0].mlp.gate_proj.weight]  # (8-bit: >= 4096 elements)
    assert type(moments["exp_avg"]).__name__ == "OptimState8bit"
    assert stats.lr == pytest.approx(cfg.optim.lr) and isinstance(stats.lr, float)  # the base lr did not move
    path = train_mod.save(state)
    fresh = train_mod.setup(cfg, model=tiny_model(tok, seed=1), tokenizer=tok)
    train_mod.resume(fresh, path)
    restored = fresh.optimizer.state[fresh.model.model.layers[0].mlp.gate_proj.weight]["exp_avg"]
    assert torch.equal(restored.dequantize(), moments["exp_avg"].dequantize())


def test_cuda_index_of_a_bare_cuda_device_is_the_current_one(monkeypatch):
    """accelerate hands the trainer torch.device("cuda") without an index; torch.cuda.mem_get_info refuses that
    (ValueError on the H200, 2026-12-03: the r1 pipeline's first GRPO step), so free_device_bytes asks by index."""
    from grpo.memory import cuda_index

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert cuda_index("cuda") == 3 and cuda_index(torch.device("cuda")) == 3
    assert cuda_index("cuda:1") == 1


def test_free_device_bytes_passes_an_index_to_torch(monkeypatch):
    from grpo import memory

    seen = []

    def record(name, value):
        def fn(arg=None):
            seen.append((name, arg))
            return value
        return fn

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", record("mem_get_info", (10.0, 100.0)))
    monkeypatch.setattr(torch.cuda, "memory_allocated", record("memory_allocated", 5.0))
    monkeypatch.setattr(torch.cuda, "memory_reserved", record("memory_reserved", 7.0))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", record("fraction", 1.0), raising=False)
    assert memory.free_device_bytes(torch.device("cuda")) == 12.0  # min(10 + 7 - 5, 100 - 5)
    assert all(isinstance(arg, int) for _, arg in seen), seen

"""grpo.graphed: the static-shape rows layout it captures gives token_logprobs' log-probs, entropies and
gradients (fp32, CPU, no graphs needed), and on a CUDA device the replayed graphs match eager mode and
accumulate gradients over micro-batches. The trainer falls back to eager mode (with a warning) where
graphs do not apply."""
import pytest
import torch

from grpo.graphed import GraphedLogprobs
from grpo.logprobs import pack, rows_layout, token_logprobs
from grpo.testing import tiny_model
from logprob_utils import grads, weights


def _batch(device="cpu", seed=0):
    """Two prompts (lengths 5 and 3) x 6 ragged completions (one empty) of at most 21 tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = [[5, 6, 7, 8, 9]] * 6 + [[10, 11, 12]] * 6
    comp = torch.randint(13, 40, (12, 21), generator=g)
    lens = torch.tensor([21, 7, 13, 1, 15, 0, 20, 21, 9, 18, 11, 5])
    mask = (torch.arange(21)[None] < lens[:, None]).long()
    return pack(rows, comp * mask, mask, pad_id=0).to(device)


def test_static_layout_shapes():
    b = _batch()
    lay = rows_layout(b, multiple=(8, 16))
    assert lay.input_ids.shape == (2, 8 + 6 * 32)  # P 5 -> 8, T 21 -> 32
    assert lay.plan.shape == (12, 1, 32, 8 + 32)
    assert lay.src_seq.shape == lay.src_pos.shape == (12 * 32,)  # every position, padding included
    plain = rows_layout(b)
    assert plain.src_seq.shape == (int(b.completion_mask.sum()),)


def test_static_layout_forward_matches_token_logprobs(tok):
    """What the graphs record (GraphedLogprobs._forward over rows_layout(multiple=...)), run eagerly: the
    same log-probs, entropies and gradients as token_logprobs at the real tokens."""
    torch.manual_seed(0)
    model = tiny_model(tok)
    b = _batch()
    model.zero_grad(set_to_none=True)
    ref, ref_ent = token_logprobs(model, b, temperature=0.7, with_entropy=True, attention="dense")
    (ref * weights(ref)).sum().backward()
    ref_g = grads(model)

    model.zero_grad(set_to_none=True)
    g = GraphedLogprobs(model, 0.7, compile_head=False, multiple=(8, 16), chunk_tokens=64)
    lay = rows_layout(b, multiple=(8, 16))
    n, t_used = b.completion_ids.shape
    t = lay.plan.shape[2]
    targets = torch.zeros((n, t), dtype=torch.long)
    targets[:, :t_used] = b.completion_ids
    flat, flat_ent = g._forward(lay.input_ids, lay.position_ids, lay.plan, lay.src_seq, lay.src_pos, targets.flatten())
    real = b.completion_mask > 0
    lp = torch.where(real, flat.view(n, t)[:, :t_used], 0.0)
    ent = torch.where(real, flat_ent.view(n, t)[:, :t_used], 0.0)
    (lp * weights(lp)).sum().backward()
    assert torch.allclose(lp, ref, atol=1e-5)
    assert torch.allclose(ent, ref_ent, atol=1e-5)
    assert torch.allclose(grads(model), ref_g, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arena_layers", [2, 1])  # room for every layer input, or for the first only
def test_checkpoints_in_an_arena_give_the_same_gradients(tok, arena_layers):
    """Gradient checkpointing whose saved layer inputs are copied into a scratch buffer (the engine's KV cache
    on a GPU) gives exactly the log-probs and gradients of ordinary checkpointing; the buffer holds the
    first layers' inputs afterwards and gets no autograd history; without room a layer checkpoints as usual."""
    torch.manual_seed(0)
    model = tiny_model(tok)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    b = _batch()
    lay = rows_layout(b, multiple=(8, 16))
    n, t_used = b.completion_ids.shape
    t = lay.plan.shape[2]
    targets = torch.zeros((n, t), dtype=torch.long)
    targets[:, :t_used] = b.completion_ids
    args = (lay.input_ids, lay.position_ids, lay.plan, lay.src_seq, lay.src_pos, targets.flatten())
    per_layer = lay.input_ids.numel() * model.config.hidden_size
    before = [layer._gradient_checkpointing_func for layer in model.model.layers]
    results = []
    for arena in (None, torch.full((arena_layers * per_layer + 7,), float("nan"))):
        model.zero_grad(set_to_none=True)
        g = GraphedLogprobs(model, 1.0, compile_head=False, multiple=(8, 16), chunk_tokens=64,
                            scratch=(lambda a=arena: a))
        g._sync_arena()  # takes the scratch buffer, as each call does before a replay
        assert g.arena is arena
        lp, _ = g._forward(*args)
        (lp * weights(lp)).sum().backward()
        results.append((lp.detach(), grads(model)))
        if arena is not None:
            assert arena.grad_fn is None and not arena.requires_grad
            embedded = model.get_input_embeddings()(lay.input_ids).detach().flatten()
            assert torch.equal(arena[:per_layer], embedded)  # layer 0's input, written by the forward
            assert torch.isnan(arena[arena_layers * per_layer:]).all()  # the tail too short for a layer
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert [layer._gradient_checkpointing_func for layer in model.model.layers] == before  # unwrapped again


def test_engine_growth_drops_the_update_graphs_and_frees_the_old_cache(tok):
    """The engine grows its KV cache when a call needs more slots (a longer prompt): the update, whose gradient
    checkpoints live in that cache (`EngineSampler.scratch`), must drop the graphs captured with the old buffer
    and take the new one before its next replay, and must not keep the old buffer alive meanwhile. A call that
    fits the cache keeps the buffer and the graphs. (The same `_sync_arena` runs before every replay.)"""
    import gc
    import weakref

    from grpo.engine import EngineSampler
    from grpo.rollout import SamplingParams

    model = tiny_model(tok)
    eng = EngineSampler(model, tok, max_batch=4, bucket=16)
    g = GraphedLogprobs(model, 1.0, compile_head=False, scratch=eng.scratch)
    g._sync_arena()
    assert g.arena is None
    params = SamplingParams(max_new_tokens=5, temperature=0.0)
    eng.generate([[5] * 10], 2, params)
    g._sync_arena()
    assert g.arena is eng.scratch() is not None
    captured = object()
    g.graphs["shape"] = captured                  # stands for a captured pair (CUDA only)
    eng.generate([[6] * 12], 2, params)           # fits the cache: same buffer, graphs kept
    g._sync_arena()
    assert g.graphs.get("shape") is captured and g.arena is eng.scratch()
    old = weakref.ref(eng.scratch())
    eng.generate([[5] * 40], 2, params)           # needs more slots: a new, larger cache
    gc.collect()
    assert old() is None                          # nothing holds the dropped buffer, the update included
    g._sync_arena()
    assert not g.graphs and g.arena is eng.scratch() and g.arena.numel() > 0


def test_usable_says_why_not():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    if not torch.cuda.is_available():
        assert "CUDA" in GraphedLogprobs.usable(model, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphs_match_eager_and_accumulate(tok):
    """bf16 with compiled layers, as the trainer runs on a GPU (model.compile + model.cuda_graphs); the
    reference is the same static layout run eagerly. Its autograd graph must be gone before the capture:
    a live graph's AccumulateGrad nodes belong to the default stream and break the backward's capture
    (seen on an H100 when this test kept `flat` alive)."""
    from grpo.models import compile_blocks

    torch.manual_seed(0)
    model = tiny_model(tok).cuda().to(torch.bfloat16)
    compile_blocks(model)
    b = _batch("cuda")
    g = GraphedLogprobs(model, 0.7, compile_head=False, multiple=(8, 16), chunk_tokens=64)
    lay = rows_layout(b, multiple=(8, 16))
    n, t_used = b.completion_ids.shape
    t = lay.plan.shape[2]
    targets = torch.zeros((n, t), dtype=torch.long, device="cuda")
    targets[:, :t_used] = b.completion_ids
    model.zero_grad(set_to_none=True)
    flat, flat_ent = g._forward(lay.input_ids, lay.position_ids, lay.plan, lay.src_seq, lay.src_pos, targets.flatten())
    real = b.completion_mask > 0
    ref = torch.where(real, flat.view(n, t)[:, :t_used], 0.0)
    ref_ent = torch.where(real, flat_ent.view(n, t)[:, :t_used], 0.0).detach()
    (ref * weights(ref)).sum().backward()
    ref, ref_g = ref.detach(), grads(model).float()
    del flat, flat_ent  # drop the eager autograd graph (see the docstring)
    model.zero_grad(set_to_none=True)
    for k in (1, 2):  # capture + replay, then a second replay that must add the same gradients
        lp, ent = g(b)
        (lp * weights(lp)).sum().backward()
        assert torch.allclose(lp, ref, atol=1e-3)
        assert torch.allclose(ent, ref_ent, atol=1e-3)
        got = grads(model).float()
        assert (got - k * ref_g).norm() <= 0.02 * k * ref_g.norm()
    assert len(g.graphs) == 1 and not g.disabled


def test_trainer_falls_back_without_cuda(tmp_path, tok):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    from grpo.config import load_config
    from grpo.train import setup

    cfg = load_config(None, ["model.cuda_graphs=true", f"run.output_dir={tmp_path}", "optim.steps=1",
                             "run.mixed_precision='no'", "run.progress=false",
                             "eval.before=false", "eval.after=false"])
    with pytest.warns(UserWarning, match="without CUDA graphs"):
        state = setup(cfg, model=tiny_model(tok), tokenizer=tok)
    assert state.update_graphs is None

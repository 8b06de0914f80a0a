import copy

import pytest
import torch

from adapter_utils import tiny_model
from grpo.adapters import apply_adapters, cache_bytes_per_token, mla_generate, mla_layers
from grpo.adapters.mla import absorbed_forward, allocate_latent_cache

IDS = torch.tensor([[5, 17, 33, 8, 91, 42, 7, 64, 3, 29, 11, 70, 15, 88, 23, 51]])
HEAD_DIM, NUM_KV = 16, 2


def _logits(model, ids=IDS, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


def _mla(model, rank, rope_dims, selection="norm", **kw):
    return apply_adapters(copy.deepcopy(model),
                          {"mla": {"rank": rank, "rope_dims": rope_dims, "rope_selection": selection}}, **kw)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_full_rank_full_rope_is_exact(kind):
    dense = tiny_model(kind)
    mla = _mla(dense, rank=NUM_KV * HEAD_DIM, rope_dims=HEAD_DIM)  # nothing dropped: only permutations
    assert (_logits(mla) - _logits(dense)).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_full_rank_partial_rope_only_drops_positions(kind):
    dense = tiny_model(kind)
    rope = 4
    full = NUM_KV * (2 * HEAD_DIM - rope)
    exact_kv = _mla(dense, rank=full, rope_dims=rope)
    low = _mla(dense, rank=8, rope_dims=rope)
    err_rope = (_logits(exact_kv) - _logits(dense)).abs().max()
    err_low = (_logits(low) - _logits(dense)).abs().max()
    assert err_rope > 1e-4             # removing RoPE from 12 of 16 dims changes scores
    assert err_low > err_rope          # and rank 8 of 56 adds low-rank error


@pytest.mark.parametrize("kind,attn", [("llama", "eager"), ("qwen2", "eager"), ("llama", "sdpa")])
def test_absorbed_latent_path_matches_full_forward(kind, attn):
    mla = _mla(tiny_model(kind), rank=12, rope_dims=4)
    mla.config._attn_implementation = attn
    ref = _logits(mla)
    t = IDS.shape[1]
    pos = torch.arange(t)[None]
    with torch.no_grad():
        caches = allocate_latent_cache(mla, 1, t)
        prefill = absorbed_forward(mla, IDS[:, :10], pos[:, :10], caches, 0)  # prefill 10 tokens
        steps = [absorbed_forward(mla, IDS[:, i:i + 1], pos[:, i:i + 1], caches, i) for i in range(10, t)]
    got = torch.cat([prefill] + steps, dim=1)
    assert (got - ref).abs().max() <= 1e-4
    assert caches[0].shape == (1, t, 12 + NUM_KV * 4)  # only latent + rotary keys are held


def test_mla_generate_matches_hf_generate_with_left_padding():
    mla = _mla(tiny_model(), rank=12, rope_dims=4)
    ids = torch.tensor([[0, 0, 0, 5, 17, 33], [9, 44, 12, 60, 21, 8]])
    mask = (ids != 0).long()
    ours = mla_generate(mla, ids, mask, max_new_tokens=8)
    with torch.no_grad():
        hf = mla.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    assert torch.equal(ours, hf)


def test_cache_bytes_per_token():
    dense = tiny_model()
    assert cache_bytes_per_token(dense, torch.bfloat16) == 2 * 2 * NUM_KV * HEAD_DIM * 2  # layers*K,V*heads*d*2B
    mla = _mla(dense, rank=12, rope_dims=4)
    assert cache_bytes_per_token(mla, torch.bfloat16) == 2 * (12 + NUM_KV * 4) * 2
    assert cache_bytes_per_token(mla, torch.float32) == 2 * (12 + NUM_KV * 4) * 4


def test_rope_selection_norm_and_fixed():
    dense = tiny_model()
    with torch.no_grad():  # make frequency pair 5 of KV head 1 dominate q·k (dims 5 and 13 of the head)
        for layer in dense.model.layers:
            for dim in (5, 13):
                layer.self_attn.k_proj.weight[HEAD_DIM + dim] *= 50
    norm = _mla(dense, rank=12, rope_dims=4, selection="norm")
    fixed = _mla(dense, rank=12, rope_dims=4, selection="fixed")
    for a in mla_layers(norm):
        assert 5 in a.rope_pairs[1].tolist()
    for a in mla_layers(fixed):
        assert a.rope_pairs.tolist() == [[0, 1], [0, 1]]


def test_calibration_lowers_error_on_calibration_text():
    dense = tiny_model()
    torch.manual_seed(3)
    calib = torch.randint(3, 101, (4, 24))
    plain = _mla(dense, rank=10, rope_dims=4)
    aware = _mla(dense, rank=10, rope_dims=4, calibration_ids=calib)
    ref = _logits(dense, calib)
    assert (_logits(aware, calib) - ref).pow(2).mean() < (_logits(plain, calib) - ref).pow(2).mean()


def test_bad_mla_config_raises():
    with pytest.raises(ValueError, match="rope_dims"):
        _mla(tiny_model(), rank=8, rope_dims=3)
    with pytest.raises(ValueError, match="rank"):
        _mla(tiny_model(), rank=999, rope_dims=4)


def test_mla_model_trains():
    mla = _mla(tiny_model(), rank=12, rope_dims=4).train()
    loss = mla(IDS, labels=IDS).loss
    loss.backward()
    for a in mla_layers(mla):
        assert a.kv_down.weight.grad.abs().sum() > 0 and a.k_up.weight.grad.abs().sum() > 0


class _CharTokenizer:
    """Bytes -> ids 3..100 (enough for the tiny model's vocabulary of 101)."""
    eos_token_id = 2
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (b % 98) for b in text.encode()]}


def test_kd_loss_on_hand_made_logits():
    from grpo.adapters.heal import kd_loss
    t = torch.tensor([[[0.0, 0.0]]])                  # p = (1/2, 1/2)
    s = torch.tensor([[[0.0, torch.log(torch.tensor(3.0))]]])  # q = (1/4, 3/4)
    fwd = 0.5 * torch.log(torch.tensor(2.0)) + 0.5 * torch.log(torch.tensor(2 / 3))
    rev = 0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(1.5))
    assert kd_loss(s, t, kd="forward").item() == pytest.approx(fwd.item(), abs=1e-6)
    assert kd_loss(s, t, kd="reverse").item() == pytest.approx(rev.item(), abs=1e-6)
    assert kd_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_heal_reduces_held_out_kd_and_perplexity_gap():
    from grpo.adapters.heal import heal, kd_loss, pack_texts, perplexity
    tok = _CharTokenizer()
    teacher = tiny_model()
    student = _mla(teacher, rank=6, rope_dims=2)
    texts = [f"{a} plus {b} is {a + b}. " * 3 for a in range(20) for b in range(5)]
    held = pack_texts(tok, [f"{a} plus {b} is {a + b}. " for a in range(30, 45) for b in range(3)], 32)

    def gap():
        with torch.no_grad():
            return kd_loss(student(held).logits, teacher(held).logits).item()

    before = gap()
    stats = heal(student, teacher, tok, texts, steps=40, lr=3e-3, batch_size=4, seq_len=32)
    assert stats.steps == 40 and stats.tokens == 40 * 4 * 32
    assert gap() < 0.5 * before
    ppl_t = perplexity(teacher, tok, texts[:10], seq_len=64)
    assert abs(perplexity(student, tok, texts[:10], seq_len=64) - ppl_t) / ppl_t < 0.5


def test_rotation_selection_prefers_fast_pairs_at_equal_norm():
    dense = tiny_model()
    with torch.no_grad():  # equalise pair norms: the rotation term alone decides
        for layer in dense.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                w = proj.weight.view(-1, HEAD_DIM, 64)
                w.copy_(w / w.norm(dim=-1, keepdim=True))
            layer.input_layernorm.weight.fill_(1.0)
    from grpo.adapters.mla import _rotation_error
    err = _rotation_error(dense, 1024)  # [8]: saturates (~4/pi) for pairs that turn fully in 1024 steps
    assert err[-1] < 0.2 * err[0]       # the slowest pair barely rotates
    expected = sorted(torch.topk(err, 2).indices.tolist())
    rot = _mla(dense, rank=12, rope_dims=4, selection="rotation")
    for a in mla_layers(rot):
        assert a.rope_pairs.tolist() == [expected, expected]
        assert HEAD_DIM // 2 - 1 not in a.rope_pairs.tolist()[0]

"""The fused head + sampler (grpo.engine.fused_sampling) against the unfused maths and the unfused engine.

Runs on CPU through Triton's interpreter (TRITON_INTERPRET=1 must be set before triton is imported, hence
subprocesses). Skipped without triton. The draws are seeded, so each check is deterministic; the
distribution check would fail for a biased sampler (wrong noise, temperature or normaliser).
"""
import pytest
from interp_utils import ENGINE_SETUP, run_interpreted

pytest.importorskip("triton")

KERNELS = r"""
import torch
from grpo.engine.fused_sampling import commit, head_partials, reference_head
torch.manual_seed(0)
n, hidden, vocab, T, slots = 37, 64, 300, 8, 20
x, g = torch.randn(n, hidden), 1 + 0.1 * torch.randn(hidden)
w = 0.3 * torch.randn(vocab, hidden)
z = reference_head(x, g, 1e-5, w)
eos = torch.zeros(vocab, dtype=torch.bool)
eos[z.argmax(-1)[:5]] = True                       # rows 0-4's greedy choice is an EOS token


def step(temperature, ban_until, col, done, block_v=64):
    tok, pos = torch.zeros(n, dtype=torch.long), torch.arange(n)
    mask = torch.full((n, slots), float("-inf"))
    out_tok, out_logp = torch.full((n, T), -1, dtype=torch.long), torch.zeros(n, T)
    pf, pi = head_partials(x, g, 1e-5, w, temperature, torch.tensor([99]), torch.tensor([col]), ban=eos,
                           min_new=ban_until, block_m=16, block_v=block_v, block_k=32, num_warps=4)
    commit(pf, pi, eos, done, tok, pos, mask, out_tok, out_logp, torch.tensor([5]), torch.tensor([col]), 0)
    return tok, pos, mask, out_tok, out_logp

# greedy, no ban: the argmax and its log-prob under the full softmax; done rows record pad and 0
done = torch.zeros(n, dtype=torch.bool)
done[7] = True
tok, pos, mask, out_tok, out_logp = step(0.0, 0, 2, done)
ref = z.argmax(-1)
ref[7] = 0
assert torch.equal(out_tok[:, 2], ref) and torch.equal(tok, ref)
lp = z.log_softmax(-1).gather(-1, ref[:, None])[:, 0]
lp[7] = 0.0
assert float((out_logp[:, 2] - lp).abs().max()) < 1e-5
assert (out_tok[:, [0, 1, 3]] == -1).all()          # only this step's column written
assert torch.equal(pos, torch.arange(n) + 1)
assert (mask[:, 6] == 0).all() and torch.isinf(mask[:, [5, 7]]).all()  # the next slot opened, only it
assert torch.equal(done, eos[ref] | (torch.arange(n) == 7))
# EOS banned while col < min_new: rows 0-4 take their best non-EOS token; the log-prob is still under
# the unbanned softmax
done = torch.zeros(n, dtype=torch.bool)
tok, _, _, out_tok, out_logp = step(0.0, 4, 3, done)
alt = z.masked_fill(eos, float("-inf")).argmax(-1)
assert torch.equal(tok, alt) and not eos[tok].any() and not done.any()
assert float((out_logp[:, 3] - z.log_softmax(-1).gather(-1, alt[:, None])[:, 0]).abs().max()) < 1e-5
tok, *_ = step(0.0, 3, 3, torch.zeros(n, dtype=torch.bool))   # col 3 >= min_new 3: EOS allowed again
assert torch.equal(tok, z.argmax(-1))
# sampled: the recorded log-prob is the drawn token's under softmax(z / T), whatever the block size
for temperature, block_v in ((1.0, 64), (0.7, 128)):
    tok, _, _, out_tok, out_logp = step(temperature, 0, 0, torch.zeros(n, dtype=torch.bool), block_v)
    want = (z / temperature).log_softmax(-1).gather(-1, tok[:, None])[:, 0]
    assert float((out_logp[:, 0] - want).abs().max()) < 1e-5
print("ok")
"""

DISTRIBUTION = r"""
import torch
from grpo.engine.fused_sampling import commit, head_partials, reference_head
torch.manual_seed(0)
rows, hidden, vocab = 64, 32, 10
x = torch.randn(1, hidden).repeat(rows, 1)       # one context, 64 rows: 64 draws per step
g = torch.ones(hidden)
w = 0.4 * torch.randn(vocab, hidden)
z = reference_head(x, g, 1e-5, w)[0]
no_eos = torch.zeros(vocab, dtype=torch.bool)
for temperature in (1.0, 2.0):
    counts = torch.zeros(vocab)
    for col in range(50):                          # 50 steps: fresh noise per output column
        c = torch.tensor([col])
        pf, pi = head_partials(x, g, 1e-5, w, temperature, torch.tensor([1234]), c, block_m=64, block_v=4,
                               block_k=32, num_warps=4)
        out_tok = torch.zeros(rows, 50, dtype=torch.long)
        commit(pf, pi, no_eos, torch.zeros(rows, dtype=torch.bool), torch.zeros(rows, dtype=torch.long),
               torch.zeros(rows, dtype=torch.long), torch.zeros(rows, 8), out_tok, torch.zeros(rows, 50),
               torch.tensor([3]), c, 0)
        counts += torch.bincount(out_tok[:, col], minlength=vocab).float()
    p = (z / temperature).softmax(-1)
    expected = p * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9, (temperature, chi2, counts.tolist(), expected.tolist())  # 9 dof, p = 0.001
    # and the draws are not the same for every row (noise differs per row)
    assert (counts > 0).sum() >= 4, counts
print("ok")
"""

ENGINE = ENGINE_SETUP + r"""
model = tiny_model()
fs = EngineSampler(model, Tok(), max_batch=6, bucket=8, fused=True)
plain = EngineSampler(model, Tok(), max_batch=6, bucket=8, fused=True, fused_sampling=False)
assert fs.fused_sampling and not plain.fused_sampling
# greedy (with and without EOS banned): the same tokens and log-probs as the unfused sampler
for min_new in (0, 12):
    params = SamplingParams(max_new_tokens=12, temperature=0.0, min_new_tokens=min_new)
    a, b = fs.generate(prompts, 2, params), plain.generate(prompts, 2, params)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_mask, b.completion_mask)
    assert float((a.logprobs - b.logprobs).abs().max()) < 1e-4
# top-k goes through the unfused sampler: with one seed, the same draws as the unfused engine
params = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=5)
torch.manual_seed(3)
a = fs.generate(prompts, 2, params)
torch.manual_seed(3)
b = plain.generate(prompts, 2, params)
assert torch.equal(a.completion_ids, b.completion_ids)
# sampled: seeded runs repeat; each log-prob is the token's under the model's own forward pass
params = SamplingParams(max_new_tokens=12, temperature=1.0)
torch.manual_seed(1)
a = fs.generate(prompts, 2, params)
torch.manual_seed(1)
assert torch.equal(a.completion_ids, fs.generate(prompts, 2, params).completion_ids)
torch.manual_seed(2)
assert not torch.equal(a.completion_ids, fs.generate(prompts, 2, params).completion_ids)
model.eval()
worst = 0.0
for i in range(6):
    prompt = prompts[i // 2]
    n = int(a.completion_mask[i].sum())
    ids = torch.tensor([prompt + a.completion_ids[i, :n].tolist()])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1: len(prompt) - 1 + n]
    want = F.log_softmax(logits.float(), -1).gather(-1, ids[0, len(prompt):, None])[:, 0]
    worst = max(worst, float((a.logprobs[i, :n] - want).abs().max()))
assert worst < 1e-4, worst
print("ok", worst)
"""


def test_head_and_commit_kernels_match_unfused_maths():
    """Greedy choice and log-prob, EOS ban before min_new_tokens, done rows, and the bookkeeping writes."""
    assert run_interpreted(KERNELS).startswith("ok")


def test_fused_draws_follow_the_softmax_at_each_temperature():
    assert run_interpreted(DISTRIBUTION).startswith("ok")


def test_engine_with_fused_sampling_matches_unfused_engine_and_forward_pass():
    assert run_interpreted(ENGINE).startswith("ok")

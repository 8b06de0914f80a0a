"""model.compile: grpo.models.compile_blocks compiles the layers in place without changing the maths,
the parameter names or the shapes it accepts (dynamic shapes: a second sequence length reuses it)."""
import copy

import torch

from grpo.models import compile_blocks, tiny_llama


def test_compiled_layers_match_eager_loss_and_gradients():
    eager = tiny_llama(vocab_size=256)
    eager.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    compiled = copy.deepcopy(eager)
    keys = list(compiled.state_dict())
    n_layers = compiled.config.num_hidden_layers
    assert compile_blocks(compiled) == n_layers + 1  # each decoder layer whole + the final norm
    assert list(compiled.state_dict()) == keys
    eager.train()
    compiled.train()
    gen = torch.Generator().manual_seed(0)
    for length in (17, 23):
        ids = torch.randint(0, 256, (3, length), generator=gen)
        for m in (eager, compiled):
            m.zero_grad(set_to_none=True)
        le = eager(ids, labels=ids).loss
        le.backward()
        lc = compiled(ids, labels=ids).loss
        lc.backward()
        assert abs(le.item() - lc.item()) < 1e-5
        worst = max((a.grad - b.grad).abs().max().item() for a, b in zip(eager.parameters(), compiled.parameters()))
        assert worst < 1e-5


def test_compiled_logprob_head_matches_plain_logprobs_entropy_and_grads():
    """token_logprobs(compile_head=True) (what model.compile turns on) gives the plain head's numbers,
    with and without gradients, over chunks of different sizes (dynamic shapes)."""
    from grpo.logprobs import pack, token_logprobs

    model = tiny_llama(vocab_size=256)
    gen = torch.Generator().manual_seed(0)
    comp = torch.randint(3, 256, (6, 20), generator=gen)
    mask = (torch.arange(20)[None] < torch.tensor([20, 5, 13, 20, 1, 9])[:, None]).long()
    batch = pack([[5, 6, 7]] * 3 + [[8, 9]] * 3, comp * mask, mask, pad_id=0)
    out = {}
    for compiled in (False, True):
        model.zero_grad(set_to_none=True)
        lp, ent = token_logprobs(model, batch, temperature=0.7, chunk_tokens=16, with_entropy=True,
                                 compile_head=compiled)
        lp.sum().backward()
        with torch.no_grad():
            lp_ng, _ = token_logprobs(model, batch, temperature=0.7, chunk_tokens=16, compile_head=compiled)
        out[compiled] = (lp.detach(), ent, lp_ng, [p.grad.clone() for p in model.parameters()])
    a, b = out[False], out[True]
    for x, y in zip(a[:3], b[:3]):
        assert torch.allclose(x, y, atol=1e-5), (x - y).abs().max()
    assert max((x - y).abs().max().item() for x, y in zip(a[3], b[3])) < 1e-5

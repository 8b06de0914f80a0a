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
    assert compile_blocks(compiled) == 4 * n_layers + 1  # attention, MLP, 2 norms per layer + final norm
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

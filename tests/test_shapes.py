"""grpo.shapes: public shapes build the models they name, and the floor arithmetic on a hand-sized shape."""
import pytest
import torch

from grpo.shapes import (SHAPES, Shape, Workload, decode_weight_bytes, forward_flops, kv_bytes_per_token,
                         matmul_params, param_count, sampling_floor, step_floor, update_bytes_per_token,
                         update_flops)

# 1 layer, D 2, one head of 2 (q and kv), MLP 4, vocabulary 8, tied
TOY = Shape("toy", "llama", hidden=2, layers=1, heads=1, kv_heads=1, head_dim=2, intermediate=4, vocab=8,
            tied=True, rope_theta=1e4)
W = Workload(prompts=1, group=2, prompt_len=3, tokens=2)


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-0.5b", "qwen3-1.7b", "llama3.1-8b"])
def test_shapes_build_models_with_their_parameter_count(name):
    from transformers import AutoModelForCausalLM

    shape = SHAPES[name]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape.hf_config())
    assert sum(p.numel() for p in model.parameters()) == param_count(shape)
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.bias is not None) == shape.qkv_bias
    assert hasattr(attn, "q_norm") == shape.qk_norm
    assert Shape.from_hf_config(model.config, name) == shape.__class__(**{**shape.__dict__, "rope_scaling": ()})


def test_public_parameter_counts():
    # the figures the model cards give: 135M, 0.49B, 1.54B, 3.09B, 8.03B
    assert param_count(SHAPES["smollm2-135m"]) == 134_515_008
    assert param_count(SHAPES["qwen2.5-1.5b"]) == 1_543_714_304
    assert param_count(SHAPES["llama3.1-8b"]) == 8_030_261_248


def test_counts_by_hand():
    assert matmul_params(TOY) == 4 + 8 + 4 + 24           # q, k+v, o, gate+up+down
    assert param_count(TOY) == 40 + 4 + 16 + 2             # + 2 norms, embedding (tied head), final norm
    assert decode_weight_bytes(TOY) == 62 * 2              # tied: the embedding is the head, read once
    untied = Shape(**{**TOY.__dict__, "tied": False})
    assert decode_weight_bytes(untied) == (param_count(untied) - 16) * 2  # the input table is not read
    assert kv_bytes_per_token(TOY) == 1 * 2 * 1 * 2 * 2


def test_floors_by_hand():
    # forward: layers 2·40·(1·3 + 2·2) = 560, head 2·16·(2·2) = 128, attention 4·1·1·2·(9/2 + 2·(2·3 + 4/2)) = 164
    assert forward_flops(TOY, W) == 560 + 128 + 164
    assert update_flops(TOY, W, checkpointing=True) == 4 * 852
    assert update_flops(TOY, W, checkpointing=False, extra_forwards=1) == 4 * 852
    # memory-bound: prefill 124 + 8·3 bytes; one decode step 124 + 8·(3 + 2·1) + 8·2 (the new slots)
    assert sampling_floor(TOY, W, bandwidth=1.0, flops=1e30) == 148 + 180
    # compute-bound: prefill 2·40·3 + 2·16 + 36; decode 2·56·2 + 4·2·(2·4)
    assert sampling_floor(TOY, W, bandwidth=1e30, flops=1.0) == 308 + 288
    f = step_floor(TOY, W, bandwidth=2.0, flops=4.0)
    assert f["update"] == 4 * 852 / 4.0 and f["optimizer"] == 7 * 62 * 2 / 2.0
    assert f["step"] == f["sampling"] + f["update"] + f["optimizer"]
    assert step_floor(TOY, W, 2.0, 4.0, master_fp32=True)["optimizer"] == 2 * f["optimizer"]


def test_update_bytes_per_token_by_hand():
    layer = 2 * (6 * 2 + 3 * 2 + 2 + 3 * 4)  # 6 D-wide, q/k/v, attention output, 3 MLP-wide; bf16
    assert update_bytes_per_token(TOY, context=10) == 1 * 2 * 2 + 2 * layer + 40 + 2 * 6
    assert update_bytes_per_token(TOY, context=10, checkpointing=False) == 2 * layer + 40 + 12

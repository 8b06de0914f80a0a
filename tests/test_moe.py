import copy

import pytest
import torch

from adapter_utils import tiny_model
from grpo.adapters import (adapter_metrics, after_optimizer_step, apply_adapters, aux_loss, calibrate_moe_bias,
                           moe_layers, routing_replay)
from grpo.adapters.moe import BiasCalibration, DeepSeekMoE, MoEConfig, RoutingState, balanced_kmeans

IDS = torch.tensor([[5, 17, 33, 8, 91, 42, 7, 64, 3, 29, 11, 70]])


def _logits(model, ids=IDS, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


@pytest.mark.parametrize("kind,num_experts,num_shared", [("llama", 8, 1), ("llama", 4, 0), ("qwen2", 6, 2)])
def test_exact_configuration_matches_dense_logits(kind, num_experts, num_shared):
    dense = tiny_model(kind)
    moe = apply_adapters(copy.deepcopy(dense), {"moe": {"num_experts": num_experts, "top_k": num_experts,
                                                        "num_shared": num_shared}})
    assert len(moe_layers(moe)) == 2
    assert (_logits(moe) - _logits(dense)).abs().max() <= 1e-4


def test_top_k_below_num_experts_is_inexact_and_measured():
    dense = tiny_model()
    moe = apply_adapters(copy.deepcopy(dense), {"moe": {"num_experts": 8, "top_k": 2, "num_shared": 1}})
    x = torch.randn(2, 5, 64)
    dev = moe_layers(moe)[0].dense_deviation(dense.model.layers[0].mlp, x)
    assert 1e-3 < dev < 10
    assert (_logits(moe) - _logits(dense)).abs().max() > 1e-3


def test_unknown_keys_raise():
    with pytest.raises(ValueError, match="mlp"):
        apply_adapters(tiny_model(), {"mlp": {}})
    with pytest.raises(ValueError, match="top_kk"):
        apply_adapters(tiny_model(), {"moe": {"top_kk": 2}})


@pytest.mark.parametrize("bad,match", [
    ({"num_experts": 0}, "num_experts must be >= 1"),
    ({"num_experts": 2.5}, "num_experts must be an integer"),
    ({"top_k": 0}, r"top_k must be in \[1, num_experts=8\]"),
    ({"top_k": 9}, r"top_k must be in \[1, num_experts=8\]"),
    ({"num_shared": -1}, "num_shared must be >= 0"),
    ({"bias_update_rate": -1e-3}, "bias_update_rate must be a number >= 0"),
    ({"bias_update_rate": "fast"}, "bias_update_rate must be a number >= 0"),
    ({"balance_loss_coef": float("nan")}, "balance_loss_coef must be a number >= 0"),
    ({"calibrate_bias_steps": -5}, "calibrate_bias_steps must be >= 0"),
    ({"calibrate_bias_steps": True}, "calibrate_bias_steps must be an integer"),
    ({"routing_replay": "yes"}, "routing_replay must be true or false"),
])
def test_bad_values_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        MoEConfig.from_dict(bad)


def test_yaml_style_float_strings_are_accepted():
    assert MoEConfig.from_dict({"bias_update_rate": "1e-3"}).bias_update_rate == 1e-3


def test_calibration_steps_without_a_calibration_batch_raise():
    with pytest.raises(ValueError, match="calibrate_bias_steps > 0 needs a calibration batch"):
        apply_adapters(tiny_model(), {"moe": {"calibrate_bias_steps": 10}})


def test_balanced_kmeans_gives_equal_clusters_of_similar_rows():
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    w = centres.repeat_interleave(6, 0) + 0.05 * torch.randn(24, 16)       # 4 true groups of 6, shuffled
    w = w[torch.randperm(24)]
    labels = balanced_kmeans(w, 4, seed=0)
    assert torch.bincount(labels, minlength=4).tolist() == [6, 6, 6, 6]
    truth = (torch.nn.functional.normalize(w, dim=1) @ centres.t()).argmax(1)
    for c in range(4):  # each cluster is one true group
        assert truth[labels == c].unique().numel() == 1
    skewed = torch.randn(40, 8) + torch.tensor([5.0] + [0.0] * 7)           # one dominant direction
    assert torch.bincount(balanced_kmeans(skewed, 8, seed=1), minlength=8).tolist() == [5] * 8


def test_conversion_permutes_the_neurons_and_routes_by_mean_gate_rows():
    dense = tiny_model()
    moe = apply_adapters(copy.deepcopy(dense), {"moe": {"num_experts": 8, "top_k": 2, "num_shared": 1}})
    for layer, m in zip(dense.model.layers, moe_layers(moe)):
        wg = layer.mlp.gate_proj.weight
        rows = torch.cat([m.gate_proj.weight, m.shared_gate_proj.weight])             # [I, D]
        match = (rows[:, None, :] == wg[None]).all(-1)                                  # [I, I]
        assert torch.equal(match.sum(1), torch.ones(96, dtype=torch.long))              # each row is one neuron
        assert torch.equal(match.sum(0), torch.ones(96, dtype=torch.long))              # each neuron used once
        idx = match.float().argmax(1)
        assert torch.equal(torch.cat([m.up_proj.weight, m.shared_up_proj.weight]), layer.mlp.up_proj.weight[idx])
        assert torch.equal(torch.cat([m.down_proj.weight, m.shared_down_proj.weight], 1),
                           layer.mlp.down_proj.weight[:, idx])
        d_e = m.expert_dim
        expected = m.gate_proj.weight.view(8, d_e, -1).mean(1)
        assert torch.allclose(m.router.weight, expected, atol=1e-6)


def _layer(e=8, k=2, rate=0.0, coef=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = MoEConfig(num_experts=e, top_k=k, num_shared=1, bias_update_rate=rate, balance_loss_coef=coef)
    layer = DeepSeekMoE(32, 90, cfg, torch.nn.functional.silu, 0, RoutingState(1))
    torch.nn.init.normal_(layer.router.weight, std=0.3)
    with torch.no_grad():  # a strongly preferred expert: the router alone is unbalanced
        layer.router.weight[0] += 0.5
    return layer


def test_bias_update_follows_sign_of_load_gap():
    layer = _layer(rate=0.01)
    x = torch.randn(4, 16, 32) + 1.0
    layer(x)
    load = layer.stats[:8].clone()
    after = layer.e_score_correction_bias.clone()
    layer.update_bias()
    step = layer.e_score_correction_bias - after
    expected = 0.01 * torch.sign(load.mean() - load)
    assert torch.equal(step, expected)
    assert layer.last_stats["load_max_over_mean"] == pytest.approx(float(load.max() / load.mean()))
    assert float(layer.stats.sum()) == 0.0  # counts reset after the step


def test_no_counting_without_grad_and_bias_gets_no_gradient():
    layer = _layer()
    with torch.no_grad():
        layer(torch.randn(2, 4, 32))
    assert layer.stats is None
    layer(torch.randn(2, 4, 32)).sum().backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0
    assert not layer.e_score_correction_bias.requires_grad


def _imbalance(layer, steps, x):
    for _ in range(steps):
        layer(x)
        layer.update_bias()
    return layer.last_stats["load_max_over_mean"]


def test_bias_balancing_flattens_load():
    x = torch.randn(8, 32, 32) + 1.0
    unbalanced = _imbalance(_layer(rate=0.0), 1, x)
    balanced = _imbalance(_layer(rate=0.02), 150, x)
    assert unbalanced > 2.0
    assert balanced <= 1.3


def test_balance_loss_is_differentiable_and_off_by_default():
    layer = _layer(coef=0.01)
    x = torch.randn(2, 6, 32)
    layer(x)
    loss = layer.aux_loss
    assert loss is not None and loss.item() > 0
    loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0
    off = _layer(coef=0.0)
    off(x)
    assert off.aux_loss is None


def test_aux_loss_and_metrics_through_the_model():
    model = apply_adapters(tiny_model(), {"moe": {"num_experts": 8, "top_k": 2, "balance_loss_coef": 0.01,
                                                  "bias_update_rate": 0.001}})
    mask = torch.ones_like(IDS)
    model(IDS, attention_mask=mask).logits.sum()
    loss = aux_loss(model)
    assert torch.is_tensor(loss) and loss.item() > 0
    assert aux_loss(model) == 0.0  # cleared
    after_optimizer_step(model)
    m = adapter_metrics(model)
    assert set(m) == {"moe/load_max_over_mean", "moe/router_entropy", "moe/bias_range", "moe/bias_abs_max"}
    assert m["moe/load_max_over_mean"] >= 1.0
    assert m["moe/bias_range"] == pytest.approx(0.002)  # loads uneven: +γ for some, −γ for others
    assert 0 < m["moe/router_entropy"] <= torch.log(torch.tensor(8.0)).item() + 1e-6


def _moe_model():
    model = apply_adapters(tiny_model(), {"moe": {"num_experts": 8, "top_k": 2}})
    torch.manual_seed(1)
    for m in moe_layers(model):
        torch.nn.init.normal_(m.router.weight, std=0.5)
    return model


def _rollout(model):
    """Two left-padded prompts of different lengths, greedy HF generate; returns full sequences."""
    ids = torch.tensor([[0, 0, 0, 5, 17, 33], [9, 44, 12, 60, 21, 8]])
    mask = (ids != 0).long()
    with routing_replay(model, "record") as rec:
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    return out[:, ids.shape[1]:], rec[0]


def _update_layout(completion):
    """Update-forward layout: prompt + completion, right-padded (differs from rollout padding)."""
    rows = [[5, 17, 33] + completion[0].tolist(), [9, 44, 12, 60, 21, 8] + completion[1].tolist()]
    width = max(len(r) for r in rows) + 2
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


def test_recorded_routes_are_the_routers_choice_per_real_token():
    model = _moe_model()
    completion, routes = _rollout(model)
    assert routes.num_rows == 2
    assert routes.lengths.tolist() == [3 + 5, 6 + 5]  # prompt + all but the last sampled token
    ids, mask = _update_layout(completion)
    with routing_replay(model, "record") as rec:
        model(ids, attention_mask=mask)
    full = rec[0]
    for row in range(2):
        n = int(routes.lengths[row])
        assert torch.equal(routes.routes[row, :n], full.routes[row, :n])


def test_replay_reuses_rollout_routes_after_the_router_changes():
    model = _moe_model()
    completion, routes = _rollout(model)
    ids, mask = _update_layout(completion)
    real = mask.bool()
    before = _logits(model, ids, mask)
    for m in moe_layers(model):  # routing drifts: the bias now forces expert 0 everywhere
        m.e_score_correction_bias[0] = 10.0
    drifted = _logits(model, ids, mask)
    assert (drifted - before)[real].abs().max() > 1e-3
    with routing_replay(model, "replay", routes.select([0, 1])):
        replayed = _logits(model, ids, mask)
    # every token but the last of each row has a recorded route: logits match the rollout policy
    last = mask.sum(1) - 1
    keep = real.clone()
    keep[torch.arange(2), last] = False
    assert (replayed - before)[keep].abs().max() < 1e-5
    with pytest.raises(ValueError, match="select"):
        with routing_replay(model, "replay", routes.select([0])):
            model(ids, attention_mask=mask)


def test_replay_is_a_no_op_on_dense_models():
    model = tiny_model()
    with routing_replay(model, "record") as rec:
        model(IDS)
    assert rec == []


def _load_max_over_mean(model, ids):
    """Expert load of the router's own choice on ids, mean over layers (γ = 0: the bias stays)."""
    for m in moe_layers(model):
        m.cfg.bias_update_rate = 0.0
    model(ids)  # grad enabled: loads are counted
    after_optimizer_step(model)
    return sum(m.last_stats["load_max_over_mean"] for m in moe_layers(model)) / len(moe_layers(model))


def test_bias_calibration_balances_a_skewed_router():
    torch.manual_seed(0)
    prompts = torch.randint(3, 101, (16, 24))
    skewed = apply_adapters(tiny_model(), {"moe": {"num_experts": 8, "top_k": 2, "num_shared": 1}})
    for m in moe_layers(skewed):  # token-dependent scores plus a per-expert offset, as after conversion
        torch.nn.init.normal_(m.router.weight, std=0.5)
        m.e_score_correction_bias[:2] = 0.6
    calibrated = copy.deepcopy(skewed)
    calibrate_moe_bias(calibrated, BiasCalibration(prompts.tolist()), steps=300)
    before, after = _load_max_over_mean(skewed, prompts), _load_max_over_mean(calibrated, prompts)
    assert before > 2.0, before
    assert after < 1.25, after
    assert all(torch.equal(a.router.weight, b.router.weight)  # calibration touches the bias only
               for a, b in zip(moe_layers(skewed), moe_layers(calibrated)))


def test_conversion_runs_the_calibration_when_asked():
    torch.manual_seed(0)
    prompts = torch.randint(3, 101, (16, 24))
    cfg = {"num_experts": 8, "top_k": 2, "num_shared": 1}
    dense = tiny_model()
    plain = apply_adapters(copy.deepcopy(dense), {"moe": cfg})
    calibrated = apply_adapters(copy.deepcopy(dense), {"moe": {**cfg, "calibrate_bias_steps": 300}},
                                moe_calibration=BiasCalibration(prompts.tolist()))
    assert all(m.e_score_correction_bias.abs().max() > 0 for m in moe_layers(calibrated))
    assert _load_max_over_mean(calibrated, prompts) < _load_max_over_mean(plain, prompts)


def test_calibration_is_a_no_op_in_the_exact_configuration():
    dense = tiny_model()
    moe = apply_adapters(copy.deepcopy(dense), {"moe": {"num_experts": 4, "top_k": 4, "calibrate_bias_steps": 50}},
                         moe_calibration=BiasCalibration([[5, 17, 33, 8]]))
    assert all(float(m.e_score_correction_bias.abs().max()) == 0.0 for m in moe_layers(moe))
    assert (_logits(moe) - _logits(dense)).abs().max() <= 1e-4


def test_reference_copy_routes_on_its_own_state():
    model = _moe_model()
    ref = copy.deepcopy(model)
    ids, mask = _update_layout(_rollout(model)[0])
    for m in moe_layers(model):
        m.e_score_correction_bias[0] = 10.0
    with routing_replay(model, "record") as rec:
        ref(ids, attention_mask=mask)  # the copy's forwards must not land in the policy's record
        model(ids, attention_mask=mask)
    assert rec[0].num_rows == 2
    assert moe_layers(ref)[0].state is not moe_layers(model)[0].state


def test_compile_blocks_leaves_adapter_modules_eager():
    """model.compile on a MoE-converted model: layers holding DeepSeekMoE are not compiled whole; their
    attention and norms are, the MoE module is not (its routing statistics would break the graphs)."""
    from grpo.models import compile_blocks

    moe = apply_adapters(tiny_model(), {"moe": {"num_experts": 4, "top_k": 2, "num_shared": 1}})
    n = len(moe.get_decoder().layers)
    assert compile_blocks(moe) == 3 * n + 1  # attention + 2 norms per layer, and the final norm
    for layer in moe.get_decoder().layers:
        assert getattr(layer, "_compiled_call_impl", None) is None
        assert getattr(layer.mlp, "_compiled_call_impl", None) is None
        assert layer.self_attn._compiled_call_impl is not None


def test_compile_blocks_compiles_mla_layers_whole():
    """MLA attention declares itself compilable: MLA layers compile whole; with MoE the MLA attention compiles
    and the MoE module stays eager."""
    from grpo.models import compile_blocks

    mla = apply_adapters(tiny_model(), {"mla": {"rank": 8, "rope_dims": 4}})
    n = len(mla.get_decoder().layers)
    assert compile_blocks(mla) == n + 1
    assert all(layer._compiled_call_impl is not None for layer in mla.get_decoder().layers)
    both = apply_adapters(tiny_model(), {"mla": {"rank": 8, "rope_dims": 4},
                                         "moe": {"num_experts": 4, "top_k": 2, "num_shared": 1}})
    assert compile_blocks(both) == 3 * n + 1
    for layer in both.get_decoder().layers:
        assert layer.self_attn._compiled_call_impl is not None
        assert getattr(layer.mlp, "_compiled_call_impl", None) is None

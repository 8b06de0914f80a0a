"""The MoE adapter inside the GRPO trainer: routing replay from rollout to update, balance loss, metrics
(tiny random Llama converted to 8 experts, top-2; seconds on CPU)."""
import json

import pytest
import torch

from grpo.adapters import moe_layers, routing_replay
from grpo.logprobs import pack, token_logprobs
from grpo.testing import tiny_model
from grpo.train import policy_update, sample, setup, next_prompts, train
from test_train_e2e import tiny_cfg

MOE = {"num_experts": 8, "top_k": 2, "num_shared": 1}


def moe_cfg(tmp_path, moe=None, **over):
    return tiny_cfg(tmp_path, **{"model.adapter": {"moe": {**MOE, **(moe or {})}}, **over})


def _sharpen_routers(state):
    """A decisive router (the tiny model's converted one is mild), so routes differ token to token."""
    torch.manual_seed(1)
    for m in moe_layers(state.model):
        torch.nn.init.normal_(m.router.weight, std=0.5)


@pytest.mark.parametrize("backend", ["hf", "engine"])
def test_rollout_records_the_routes_the_update_layout_would_choose(tmp_path, tok, backend):
    state = setup(moe_cfg(tmp_path, **{"sampling.backend": backend}), model=tiny_model(tok), tokenizer=tok)
    _sharpen_routers(state)
    _, rollout = sample(state, next_prompts(state))
    routes = rollout.routes
    assert routes is not None and routes.num_rows == rollout.completion_ids.shape[0]
    batch = pack(rollout.prompt_ids, rollout.completion_ids, rollout.completion_mask, tok.pad_token_id)
    with torch.no_grad(), routing_replay(state.model, "record") as rec:  # the update's layout, own routing
        token_logprobs(state.model, batch)
    full = rec[0]
    for row in range(routes.num_rows):
        prompt, comp = len(rollout.prompt_ids[row]), int(rollout.completion_mask[row].sum())
        n = prompt + comp - 1  # every real token but the last sampled one went through the model
        assert int(routes.lengths[row]) >= n
        assert torch.equal(routes.routes[row, :n], full.routes[row, :n]), row


@pytest.mark.parametrize("replay,backend", [(True, "hf"), (False, "hf"), (True, "engine")])
def test_update_uses_the_rollout_experts_after_the_bias_moves(tmp_path, tok, replay, backend):
    """mu = 2, lr = 0: only the MoE bias changes (γ = 1 after the first optimizer step), which reroutes
    tokens (the replay=False case shows it does). With replay the second update routes as at rollout, so its
    ratio is exactly 1."""
    cfg = moe_cfg(tmp_path, {"bias_update_rate": 1.0, "routing_replay": replay},
                  **{"algorithm.num_iterations": 2, "sampling.backend": backend})
    state = setup(cfg, model=tiny_model(tok), tokenizer=tok)
    _sharpen_routers(state)
    for g in state.optimizer.param_groups:
        g["lr"] = 0.0
    state.scheduler.scheduler.base_lrs = [0.0] * len(state.optimizer.param_groups)
    weights = [p.detach().clone() for p in state.model.parameters()]
    _, rollout = sample(state, next_prompts(state))
    assert (rollout.routes is not None) == replay
    adv = torch.linspace(-1, 1, rollout.completion_ids.shape[0])
    out = policy_update(state, rollout, adv)
    assert all(torch.equal(a, b) for a, b in zip(weights, state.model.parameters()))  # weights did not move
    assert out["ratio_first"] == pytest.approx(1.0, abs=1e-6)
    if replay:
        assert out["ratio_last"] == pytest.approx(1.0, abs=1e-6)
        assert out["clip_low"] == 0.0 and out["clip_high"] == 0.0
    else:
        assert abs(out["ratio_last"] - 1.0) > 1e-4


def test_grpo_run_with_moe_trains_and_logs_balance_metrics(tmp_path, tok):
    cfg = moe_cfg(tmp_path, {"bias_update_rate": 0.01, "balance_loss_coef": 0.01},
                  **{"optim.steps": 3, "algorithm.kl_coef": 0.05})
    model = tiny_model(tok)
    train(cfg, model=model, tokenizer=tok)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rows) == 3
    for r in rows:
        assert r["grpo/moe/load_max_over_mean"] >= 1.0
        assert 0 < r["grpo/moe/router_entropy"] <= torch.log(torch.tensor(8.0)).item() + 1e-6
        assert r["grpo/moe/bias_range"] > 0
        assert r["grpo/moe/aux_loss"] > 0
        assert r["kl"] >= 0 and r["grad_norm"] > 0
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference routes like the policy at step 1
    assert 0 < rows[-1]["grpo/moe/bias_abs_max"] <= 0.03 + 1e-6  # 3 sign-only steps of γ = 0.01


def test_a_converted_checkpoint_given_as_the_model_keeps_balancing_and_logging(tmp_path, tok):
    """No model.adapter in the recipe: the policy already carries MoE layers (a saved converted checkpoint,
    e.g. after healing). The bias update, replay and metrics follow the model, not the recipe key."""
    from grpo.adapters import apply_adapters

    model = apply_adapters(tiny_model(tok), {"moe": {**MOE, "bias_update_rate": 0.01}})
    cfg = tiny_cfg(tmp_path, **{"optim.steps": 2})
    assert not cfg.model.adapter
    train(cfg, model=model, tokenizer=tok)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rows) == 2 and all(r["grpo/moe/load_max_over_mean"] >= 1.0 for r in rows)
    assert 0 < rows[-1]["grpo/moe/bias_abs_max"] <= 0.02 + 1e-6  # two sign steps of 0.01 happened


def test_trainer_calibrates_the_bias_on_prompts_and_own_continuations(tmp_path, tok):
    state = setup(moe_cfg(tmp_path, {"calibrate_bias_steps": 50}), model=tiny_model(tok), tokenizer=tok)
    assert all(float(m.e_score_correction_bias.abs().max()) > 0 for m in moe_layers(state.model))


def test_calibration_continuations_leave_the_global_rng_alone(tok):
    from grpo.adapters import BiasCalibration, apply_adapters, calibrate_moe_bias
    from grpo.rollout import SamplingParams

    model = apply_adapters(tiny_model(tok), {"moe": MOE})
    prompts = [tok("What is 2+2?")["input_ids"], tok("Say hi")["input_ids"]]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    calibrate_moe_bias(model, BiasCalibration(prompts, tok, SamplingParams(max_new_tokens=8)), steps=20)
    assert torch.equal(torch.rand(3), expected)
    assert any(float(m.e_score_correction_bias.abs().max()) > 0 for m in moe_layers(model))

"""DeepSeek-style adapters for ordinary HF causal LMs: MLA attention (mla.py), DeepSeekMoE MLPs
(moe.py), logit-distillation healing (heal.py), Auto-class save/load (hf.py).

Trainer contract:
    model = apply_adapters(model, cfg)            # cfg = recipe's model.adapter mapping
    with routing_replay(model, "record") as rec:  # rollout (HF generate / engine)
        batch = sampler.generate(...)
    routes = rec[0] if rec else None              # RecordedRoutes, rows in RolloutBatch order
    for rows in micro_batches:                    # update
        with routing_replay(model, "replay", routes.select(rows)):
            logp = token_logprobs(model, ...); loss = ... + aux_loss(model)
    optimizer.step(); after_optimizer_step(model); log(adapter_metrics(model))
All calls are no-ops on a model without adapters. `routing_replay_enabled(model)` says whether the
recipe asked for replay.
"""
from __future__ import annotations

import torch

from .mla import MLAConfig, cache_bytes_per_token, convert_mla, mla_generate, mla_layers  # noqa: F401
from .moe import (BiasCalibration, MoEConfig, RecordedRoutes, calibrate_moe_bias, convert_moe,  # noqa: F401
                  moe_layers, routing_replay)

ADAPTER_KEYS = ("mla", "moe")


def parse_adapter_config(cfg: dict | None) -> tuple[MLAConfig | None, MoEConfig | None]:
    cfg = cfg or {}
    for k in cfg:
        if k not in ADAPTER_KEYS:
            raise ValueError(f"unknown model.adapter key {k!r}; valid keys: {list(ADAPTER_KEYS)}")
    mla = MLAConfig.from_dict(cfg["mla"] or {}) if "mla" in cfg else None
    moe = MoEConfig.from_dict(cfg["moe"] or {}) if "moe" in cfg else None
    return mla, moe


def apply_adapters(model, cfg: dict | None, calibration_ids: torch.Tensor | None = None,
                   calibration_mask: torch.Tensor | None = None, moe_calibration: BiasCalibration | None = None):
    """Convert `model` in place (and return it). calibration_ids [B, T] (optional) drive MLA's
    2-norm RoPE selection and activation-aware SVD; without them both use the weights only.
    moe_calibration is the batch of the MoE bias calibration (needed when moe.calibrate_bias_steps > 0)."""
    from .hf import mark_adapted
    mla, moe = parse_adapter_config(cfg)
    if mla is None and moe is None:
        return model
    if getattr(model.config, "adapter", None):
        raise ValueError("model already carries adapters (config.adapter); load it as is")
    if moe is not None and moe.calibrate_bias_steps > 0 and moe_calibration is None:
        raise ValueError("moe.calibrate_bias_steps > 0 needs a calibration batch: apply_adapters(..., "
                         "moe_calibration=BiasCalibration(prompts)); the GRPO trainer passes its first 64 prompts")
    if mla is not None:
        convert_mla(model, mla, init=True, calibration_ids=calibration_ids, calibration_mask=calibration_mask)
    if moe is not None:
        convert_moe(model, moe, init=True)
        if moe.calibrate_bias_steps > 0:
            calibrate_moe_bias(model, moe_calibration)
    mark_adapted(model, {k: dict(v or {}) for k, v in cfg.items()})
    return model


def routing_replay_enabled(model) -> bool:
    layers = moe_layers(model)
    return bool(layers) and layers[0].cfg.routing_replay


def after_optimizer_step(model) -> None:
    """MoE bias update b_i += γ·sign(mean_load − load_i) from the loads counted since the last call."""
    for m in moe_layers(model):
        m.update_bias()


def aux_loss(model):
    """Sum over layers of the MoE balance loss of the last grad-enabled forward (0.0 when disabled);
    call right after each forward and add it to that forward's loss."""
    total = 0.0
    for m in moe_layers(model):
        if m.aux_loss is not None:
            total = total + m.aux_loss
            m.aux_loss = None
    return total


def adapter_metrics(model) -> dict[str, float]:
    """Averages over MoE layers of the statistics of the last optimizer step (call after
    `after_optimizer_step`): expert load max/mean, router entropy, bias range (max − min)."""
    layers = moe_layers(model)
    if not layers:
        return {}
    out: dict[str, float] = {}
    snaps = [m.last_stats for m in layers if m.last_stats]
    for key in ("load_max_over_mean", "router_entropy"):
        if snaps:
            out[f"moe/{key}"] = sum(s[key] for s in snaps) / len(snaps)
    biases = torch.stack([m.e_score_correction_bias.float() for m in layers])  # [layers, E]
    out["moe/bias_range"] = float((biases.max(1).values - biases.min(1).values).mean())
    out["moe/bias_abs_max"] = float(biases.abs().max())
    return out


from . import hf  # noqa: E402,F401  (registers the Auto classes)

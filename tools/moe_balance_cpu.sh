#!/usr/bin/env bash
# MoE balance measurement on CPU (issue 6): SmolLM2-135M-Instruct converted to DeepSeekMoE (8 routed experts,
# top-2, 1 shared; clustered experts, mean-gate router), quickstart recipe on the HF sampler, 4 prompts x 8
# samples per step, one thread, fp32 (the calibration forward is fp32; bf16 autocast alone moved the calibrated
# load from 1.16 to 1.74 on one batch). Arms, one after another:
#   bias          gamma = 1e-3 (DeepSeek-V3), calibration 200 steps
#   bias_1e-4     gamma = 1e-4, calibration 200 steps
#   calib_only    gamma = 0,    calibration 200 steps (the sign rule before training only)
#   no_bias       gamma = 0,    no calibration (same router init)
# ~9 min per arm on one core. Usage: OUT=dir [STEPS=8] [ARMS="bias no_bias"] bash tools/moe_balance_cpu.sh
set -uo pipefail
OUT=${OUT:?}
STEPS=${STEPS:-8}
PY=${PY:-python}
MODEL=${MODEL:-smollm2-135m-instruct}
ARMS=${ARMS:-bias bias_1e-4 calib_only no_bias}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"
: > "$OUT/rc.txt"
moe_of() {
  local base="num_experts: 8, top_k: 2, num_shared: 1"
  case $1 in
    bias) echo "$base, bias_update_rate: 0.001, calibrate_bias_steps: 200" ;;
    bias_1e-4) echo "$base, bias_update_rate: 0.0001, calibrate_bias_steps: 200" ;;
    calib_only) echo "$base, bias_update_rate: 0.0, calibrate_bias_steps: 200" ;;
    no_bias) echo "$base, bias_update_rate: 0.0, calibrate_bias_steps: 0" ;;
    *) echo "unknown arm $1" >&2; return 1 ;;
  esac
}
for arm in $ARMS; do
  moe=$(moe_of "$arm") || exit 1
  rm -rf "$OUT/run_$arm"
  OMP_NUM_THREADS=1 $PY -m grpo run recipes/quickstart.yaml --set "model.name=$MODEL" --set sampling.backend=hf \
    --set "model.adapter={moe: {$moe}}" --set "optim.steps=$STEPS" --set optim.prompts_per_step=4 \
    --set "run.mixed_precision='no'" --set run.torch_threads=1 --set eval.before=false --set eval.after=false \
    --set run.progress=false --set run.save_completions=false --set "run.output_dir=$OUT/run_$arm" $EXTRA \
    > "$OUT/$arm.log" 2>&1
  echo "$arm rc=$?" | tee -a "$OUT/rc.txt"
  cp "$OUT/run_$arm/metrics.jsonl" "$OUT/$arm.metrics.jsonl" 2>/dev/null
done
$PY tools/moe_balance_summary.py "$OUT"

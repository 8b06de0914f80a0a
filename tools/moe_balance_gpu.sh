#!/usr/bin/env bash
# MoE GRPO measurement (issue 6): SmolLM2-135M-Instruct converted to DeepSeekMoE (8 routed experts, top-2,
# 1 shared), quickstart recipe on the HF sampler (the engine does not serve MoE), mu = 2 so the clip
# fraction means something. Four runs at once on one GPU: bias balancing on/off, routing replay on/off,
# and a 10x bias rate. Usage: MODEL=path.gguf|alias OUT=dir [STEPS=16] [LIMIT_S=120] bash tools/moe_balance_gpu.sh
set -uo pipefail
MODEL=${MODEL:-/tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
STEPS=${STEPS:-16}
LIMIT_S=${LIMIT_S:-120}
OUT=${OUT:?}
PY=${PY:-python}
EXTRA=${EXTRA:-}
$PY -c "from grpo.models import load_model, load_tokenizer; load_tokenizer('$MODEL'); load_model('$MODEL')" \
  > "$OUT/convert.log" 2>&1 || { tail -5 "$OUT/convert.log"; exit 1; }
run() {
  local name=$1 moe=$2
  timeout "$LIMIT_S" $PY -m grpo run recipes/quickstart.yaml --set "model.name=$MODEL" --set sampling.backend=hf \
    --set "model.adapter={moe: {$moe}}" --set algorithm.num_iterations=2 --set "optim.steps=$STEPS" \
    --set eval.before=false --set eval.after=false --set run.progress=false --set run.save_completions=false \
    --set run.torch_threads=3 --set "run.output_dir=/tmp/moe_runs/$name" $EXTRA > "$OUT/$name.log" 2>&1
  echo "$name rc=$?" >> "$OUT/rc.txt"
  cp "/tmp/moe_runs/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
}
run bias_on_replay_on "" &
run bias_off_replay_on "bias_update_rate: 0.0" &
run bias_on_replay_off "routing_replay: false" &
run bias10x_replay_on "bias_update_rate: 0.01" &
wait
cat "$OUT/rc.txt"
$PY tools/moe_balance_summary.py "$OUT"

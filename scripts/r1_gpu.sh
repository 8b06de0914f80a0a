#!/usr/bin/env bash
# The R1 pipeline (recipes/r1.yaml, or RECIPE) on one GPU, in time-boxed calls that can be repeated:
#   GSM8K=/path/to/gsm8k [BASE=model] bash scripts/r1_gpu.sh [--set KEY=VALUE ...]
# GSM8K: a local copy of openai/gsm8k "main" (train.jsonl / test.jsonl; default /tmp/gsm8k). BASE: the base
# model, a Hub id, a local folder or a .gguf file (default: /tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf where
# that file exists, as the GPU machine's setup leaves it, else the bundled smollm2-135m-instruct).
# Each call stops after BUDGET_S seconds (default 300); run it again and it goes on where it stopped
# (finished stages skipped, an interrupted GRPO stage resumed from its last checkpoint).
# Env: CODE (the project tree to import; default: this checkout), RUN_DIR (default /tmp/r1),
# OUT (where the small results go), PREV (finished stage folders of an earlier run to reuse).
# Results: $OUT/summary.md, $OUT/log.txt, $OUT/results.tgz (every file of the run under 8 MB: DONE markers
# with seconds, eval summaries and per-prompt outputs, metrics).
set -uo pipefail
code=${CODE:-$(cd "$(dirname "$0")/.." && pwd)}
run=${RUN_DIR:-/tmp/r1}
out=${OUT:-/tmp/r1_out}
recipe=${RECIPE:-recipes/r1.yaml}
mkdir -p "$out" "$run"
gguf=/tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
base=${BASE:-$([ -f "$gguf" ] && echo "$gguf" || echo smollm2-135m-instruct)}
# PREV: a folder of finished stage directories (with DONE) from an earlier run, reused (skipped) here
[ -n "${PREV:-}" ] && cp -r "$PREV"/. "$run"/
export PYTHONPATH=$code:${PYTHONPATH:-} GRPO_CACHE=${GRPO_CACHE:-/tmp/grpocache} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
(cat "$code/COMMIT" 2>/dev/null || git -C "$code" rev-parse HEAD) | tee -a "$out/gpu.txt"
t0=$(date +%s)
(cd "$code" && timeout "${BUDGET_S:-300}" python3 -m grpo run "$recipe" \
   --set vars.gsm8k="${GSM8K:-/tmp/gsm8k}" --set vars.base="$base" \
   --set output_dir="$run" --set shared.run.progress=false "$@") >>"$out/log.txt" 2>&1
rc=$?
echo "pipeline rc=$rc after $(( $(date +%s) - t0 )) s" | tee -a "$out/log.txt"
cp "$run/summary.md" "$out/" 2>/dev/null
(cd "$run" && find . -type f -size -8M ! -name '*.safetensors' ! -name '*.pt' ! -name '*.bin' | tar czf "$out/results.tgz" -T -)
tail -n 30 "$out/log.txt"; cat "$out/summary.md" 2>/dev/null
exit $rc

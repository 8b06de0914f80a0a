#!/usr/bin/env bash
# MoE balance on a HEALED model (issue 6): convert SmolLM2-135M-Instruct's MLPs to DeepSeekMoE (8 routed,
# top-2, 1 shared), heal it by logit distillation from the dense model (scripts/heal_mla.py --no-mla, bias
# balanced during healing), then two GRPO runs from the healed checkpoint at once: online bias balancing
# (gamma 1e-3) vs no bias at all (bias zeroed, gamma 0). Loads are logged per step (grpo/moe/*).
# Usage: MODEL=path.gguf GSM8K=dir OUT=dir [HEAL_S=150] [STEPS=16] [LIMIT_S=150] [PY=python] bash tools/moe_healed_balance.sh
#        TINY=1 OUT=dir bash tools/moe_healed_balance.sh     # CPU smoke test of the plumbing
set -uo pipefail
OUT=${OUT:?}
PY=${PY:-python}
HEAL_S=${HEAL_S:-150}
STEPS=${STEPS:-16}
LIMIT_S=${LIMIT_S:-150}
W=${WORK:-/tmp/moe_healed}
rm -rf "$W" && mkdir -p "$W" "$OUT"
if [ -n "${TINY:-}" ]; then
  $PY scripts/heal_mla.py --tiny --no-mla --moe 8:2:1 --save --out "$W/heal" > "$OUT/heal.log" 2>&1 || { tail -20 "$OUT/heal.log"; exit 1; }
  RECIPE_SET=(--set sampling.max_new_tokens=8 --set optim.prompts_per_step=2 --set sampling.group_size=4)
else
  $PY scripts/heal_mla.py --model "${MODEL:?}" --gsm8k-dir "${GSM8K:?}" --no-mla --moe 8:2:1 --save --out "$W/heal" \
    --time-budget "$HEAL_S" --arith 100 --eval-texts 100 --skip-original > "$OUT/heal.log" 2>&1 || { tail -20 "$OUT/heal.log"; exit 1; }
  RECIPE_SET=()
fi
tail -12 "$OUT/heal.log"
# the no-bias arm: the same healed weights, bias buffers zeroed and the online rate set to 0
$PY - "$W/heal/healed" "$W/nobias" <<'PY' || exit 1
import json, shutil, sys
import torch
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst)
sd = load_file(f"{dst}/model.safetensors")
n = 0
for k in sd:
    if k.endswith("e_score_correction_bias"):
        print(f"{k}: |b| max {sd[k].abs().max():.4f} -> 0")
        sd[k] = torch.zeros_like(sd[k]); n += 1
assert n, "no e_score_correction_bias in the healed checkpoint"
save_file(sd, f"{dst}/model.safetensors", metadata={"format": "pt"})
cfg = json.load(open(f"{dst}/config.json"))
cfg["adapter"]["moe"]["bias_update_rate"] = 0.0
json.dump(cfg, open(f"{dst}/config.json", "w"), indent=2)
PY
run() {
  local name=$1 model=$2
  timeout "$LIMIT_S" $PY -m grpo run recipes/quickstart.yaml --set "model.name=$model" --set sampling.backend=hf \
    --set algorithm.num_iterations=2 --set "optim.steps=$STEPS" "${RECIPE_SET[@]}" \
    --set eval.before=false --set eval.after=false --set run.progress=false --set run.save_completions=false \
    --set run.torch_threads=3 --set "run.output_dir=$W/runs/$name" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?" >> "$OUT/rc.txt"
  cp "$W/runs/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
}
run healed_bias_on "$W/heal/healed" &
run healed_no_bias "$W/nobias" &
wait
cat "$OUT/rc.txt"
$PY tools/moe_balance_summary.py "$OUT"

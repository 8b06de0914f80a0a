#!/usr/bin/env bash
# The scaling bench (grpo/bench_scale.py) on a GPU machine: TRL importable (pip install -e '.[bench]', or
# wheels on PYTHONPATH) and the SmolLM2 GGUF, whose tokenizer the shapes use, in /tmp/smollm2.
#   bash tools/scale_gpu.sh table   # 3 shapes x 256 tokens with TRL; 135M at 128 x 4096, 1.5B at 128 x 2048 (ours)
#   bash tools/scale_gpu.sh extra   # llama3.1-8b; recipe precision; the OOM demonstration under a 32 GiB cap
# Each bench writes its table to the log and its rows to a JSON file under $OUT (or /tmp/scale).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/scale}
mkdir -p "$out"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
bench() {  # name, then bench arguments
  local name=$1
  shift
  python3 -m grpo.bench --gguf-dir /tmp/smollm2 --no-profile --json "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log"
}
case "${1:-}" in
  table)
    bench s256 --shape smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b --tokens 256 --steps 4 --trl-steps 3 --warmup 1
    bench long135m --shape smollm2-135m --tokens 4096 --skip-trl --steps 3 --warmup 1
    bench long15b --shape qwen2.5-1.5b --tokens 2048 --skip-trl --steps 3 --warmup 1 ;;
  extra)
    bench s8b --shape llama3.1-8b --tokens 256 --skip-trl --steps 3 --warmup 1
    bench recipe --shape smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b --tokens 256 --skip-trl --precision recipe \
      --steps 3 --warmup 1
    # a recipe's fixed micro-batch (128 rows, no token limit: ~52 GiB at this size) on a 32 GiB budget: the
    # update runs out of memory, halves its micro-batch and finishes (the table's update cell counts the retries)
    bench oom --shape qwen2.5-1.5b --tokens 2048 --skip-trl --steps 2 --warmup 1 --no-floors \
      --memory-limit-gib 32 --micro-batch 128 --micro-batch-tokens 0 ;;
  *) echo "usage: scale_gpu.sh table|extra"; exit 2 ;;
esac

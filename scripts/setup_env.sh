#!/usr/bin/env bash
# Creates (or reuses) the virtual environment, installs the pinned requirements and builds the
# extension in place. Sourced by scripts/test.sh and scripts/bench_cpu.sh.
#   LIC_QUANT_VENV   where the venv lives (default: .venv in the repository)
#   LIC_QUANT_CUDA   1/0 force the CUDA sources on/off (default: on when nvcc is installed)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LIC_QUANT_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements/dev.txt" 2>&1 \
  | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, numpy, pytest, pytest_benchmark" # fails loudly if the install did

# /usr/local/bin/nvcc can be a wrapper that makes torch guess CUDA_HOME wrong.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
if [ -z "${LIC_QUANT_CUDA:-}" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  export LIC_QUANT_CUDA=1
fi
export MAX_JOBS="${MAX_JOBS:-2}"
BUILD_LOG="$(mktemp)"
if ! ( cd "$ROOT" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    --no-build-isolation --no-deps -e . ) >"$BUILD_LOG" 2>&1; then
  grep -v "^WARNING: Location" "$BUILD_LOG" | tail -60
  echo "lic_quant: the build failed" >&2
  exit 1
fi
rm -f "$BUILD_LOG"
"$VENV/bin/python" -c "import sys; sys.path.insert(0, '$ROOT'); import lic_quant as lq; \
assert lq.extension_available(), lq._ops.EXTENSION_ERROR; \
print('lic_quant built; CUDA kernels compiled:', lq.cuda_kernels_built())"

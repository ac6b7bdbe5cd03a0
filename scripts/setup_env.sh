#!/usr/bin/env bash
# Creates the virtual environment, installs the pinned requirements and builds the extension in
# place; a second run reuses all of it. Sourced by scripts/test.sh and scripts/bench_cpu.sh.
#   LIC_QUANT_VENV   where the venv lives (default: .venv in the repository)
#   LIC_QUANT_CUDA   1/0: CUDA sources required/off (default: required when nvcc is on the PATH)
#   MAX_JOBS         parallel compile jobs (default 2)
#
# What is reused:
# - pip runs only when requirements/dev.txt or the Python version changed (a stamp in the venv
#   holds their hash);
# - the extension is built with `setup.py build_ext --inplace` into the persistent build/
#   directory: ninja recompiles only the sources whose code, included headers or compile flags
#   changed (CUDA on/off and the architectures are flags), then the .so is relinked (seconds);
# - the checkout is put on the venv's path once with a .pth file (what `pip install -e .` does,
#   without pip's from-scratch rebuild in a temporary directory on every run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LIC_QUANT_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
SETUP_START=$SECONDS

step() { echo "[setup $(( SECONDS - SETUP_START ))s] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi

REQ_STAMP="$VENV/.lic_quant-requirements"
REQ_HASH="$( (cat "$ROOT/requirements/dev.txt"; "$VENV/bin/python" --version) | sha256sum | cut -c1-16)"
if [ "$(cat "$REQ_STAMP" 2>/dev/null || true)" != "$REQ_HASH" ]; then
  step "installing requirements/dev.txt (torch, compressai, pytest, ...; first run about 2-3 min)"
  t0=$SECONDS
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements/dev.txt" \
    2>&1 | { grep -v "^WARNING: Location" || true; }
  "$VENV/bin/python" -c "import torch, numpy, pytest, pytest_benchmark"  # loud if pip failed
  echo "$REQ_HASH" > "$REQ_STAMP"
  step "requirements installed in $(( SECONDS - t0 ))s"
else
  step "requirements unchanged since the last run: pip skipped"
fi

# The checkout's lic_quant importable from anywhere in the venv (examples, benchmarks).
SITE="$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
echo "$ROOT" > "$SITE/lic_quant_checkout.pth"

# The CUDA sources are required wherever nvcc is installed (CI's case), so a broken toolkit fails
# the build instead of quietly giving CPU kernels only; setup.py finds the toolkit behind nvcc.
if [ -z "${LIC_QUANT_CUDA:-}" ] && command -v nvcc >/dev/null 2>&1; then
  export LIC_QUANT_CUDA=1
fi
export MAX_JOBS="${MAX_JOBS:-2}"

mkdir -p "$ROOT/build"
if [ "${LIC_QUANT_CUDA:-}" = "1" ]; then
  WHAT="CPU and CUDA kernels; from scratch about 4 min on 2 cores"
else
  WHAT="CPU kernels; from scratch about 1.5 min on 2 cores"
fi
step "building lic_quant._C in place ($WHAT; only changed sources are recompiled)"
t0=$SECONDS
BUILD_LOG="$ROOT/build/lic_quant-build.log"
if ! ( cd "$ROOT" && "$VENV/bin/python" setup.py build_ext --inplace ) >"$BUILD_LOG" 2>&1; then
  tail -60 "$BUILD_LOG"
  echo "lic_quant: the build failed (full log: $BUILD_LOG)" >&2
  exit 1
fi
COMPILED="$(grep -cE '^\[[0-9]+/[0-9]+\] ' "$BUILD_LOG" || true)"
# setup.py's one line on what it builds, or its warning saying why CUDA is left out
grep -E "UserWarning: lic_quant|^lic_quant: building" "$BUILD_LOG" || true
step "build done in $(( SECONDS - t0 ))s ($COMPILED sources recompiled; log: build/lic_quant-build.log)"
( cd / && "$VENV/bin/python" -c "import lic_quant as lq; \
assert lq.extension_available(), lq._ops.EXTENSION_ERROR; \
print('lic_quant ready; CUDA kernels compiled:', lq.cuda_kernels_built())" )

#!/usr/bin/env bash
# The test command: sets up the pinned environment, builds (CUDA sources included when nvcc is
# present), and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
if [ "${LIC_QUANT_CUDA:-0}" = "1" ]; then
  export LIC_QUANT_EXPECT_CUDA_BUILD=1  # tests/test_build.py then insists the CUDA kernels exist
fi
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -q "$@"

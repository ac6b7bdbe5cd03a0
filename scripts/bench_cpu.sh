#!/usr/bin/env bash
# The CPU kernel benchmark: eager reference vs torch.compile(reference) vs the fused C++ op,
# forward and forward+backward (pytest-benchmark), then the table with speedups.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
mkdir -p benchmarks/results
OUT="benchmarks/results/cpu-$(date -u +%Y%m%d-%H%M%S).json"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider benchmarks/test_bench_cpu.py \
  --benchmark-json="$OUT" --benchmark-save-data --benchmark-columns=median,iqr,rounds "$@"
"$VENV/bin/python" benchmarks/report.py "$OUT" | tee "${OUT%.json}.txt"

#!/usr/bin/env bash
# The CPU kernel benchmark: eager reference vs torch.compile(reference) vs the fused C++ op,
# forward and forward+backward (pytest-benchmark), then our table with speedups, a CSV and a bar
# plot of the speedups. The header names the CPU, its vector ISA level and the thread count.
#
#   bash scripts/bench_cpu.sh [--keep] [pytest args...]
#
# Results go to benchmarks/results/scratch/ (ignored by git) unless --keep writes them to
# benchmarks/results/ to be committed. pytest-benchmark's own output goes to a .log file there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEEP=0
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--keep" ]; then KEEP=1; else ARGS+=("$arg"); fi
done
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
if [ "$KEEP" = 1 ]; then DIR=benchmarks/results; else DIR=benchmarks/results/scratch; fi
mkdir -p "$DIR"
STEM="$DIR/cpu-$(date -u +%Y%m%d-%H%M%S)"
echo "[bench] running benchmarks/test_bench_cpu.py (2 shapes x 2 steps x 3 providers, 15 rounds" \
     "each; a few minutes on 2 cores); pytest-benchmark's output: $STEM.log"
if ! "$VENV/bin/python" -m pytest -q -p no:cacheprovider benchmarks/test_bench_cpu.py \
    --benchmark-json="$STEM.json" --benchmark-save-data \
    --benchmark-columns=median,iqr,rounds ${ARGS[@]+"${ARGS[@]}"} >"$STEM.log" 2>&1; then
  tail -40 "$STEM.log"
  echo "[bench] the benchmark failed (log: $STEM.log)" >&2
  exit 1
fi
"$VENV/bin/python" benchmarks/report.py "$STEM.json" --csv "$STEM.csv" --plot "$STEM.png" \
  | tee "$STEM.txt"
echo "[bench] wrote $STEM.{txt,csv,png,json,log}"
if [ "$KEEP" = 0 ]; then
  echo "[bench] (scratch directory, ignored by git; rerun with --keep to write to benchmarks/results/)"
fi

#!/usr/bin/env bash
# The CPU kernel benchmark: eager reference vs torch.compile(reference) vs the fused C++ op,
# forward and forward+backward (pytest-benchmark), then our table with speedups. The header names
# the CPU, its vector ISA level and the thread count.
#
#   bash scripts/bench_cpu.sh [--keep] [pytest args...]
#   LABEL="ATEN_CPU_CAPABILITY=avx2" ATEN_CPU_CAPABILITY=avx2 bash scripts/bench_cpu.sh --keep
#
# The rows (with date, commit, machine, torch and LABEL) are appended to
# benchmarks/results/scratch/op_cpu.csv (ignored by git); --keep appends them to
# benchmarks/results/op_cpu.csv, to be committed, and redraws benchmarks/results/plots/.
# pytest-benchmark's JSON (every round) and log stay in benchmarks/results/scratch/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEEP=0
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--keep" ]; then KEEP=1; else ARGS+=("$arg"); fi
done
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
SCRATCH=benchmarks/results/scratch
mkdir -p "$SCRATCH"
if [ "$KEEP" = 1 ]; then CSV=benchmarks/results/op_cpu.csv; else CSV=$SCRATCH/op_cpu.csv; fi
STEM="$SCRATCH/cpu-$(date -u +%Y%m%d-%H%M%S)"
echo "[bench] running benchmarks/test_bench_cpu.py (2 shapes x 2 steps x 3 providers, 15 rounds" \
     "each; a few minutes on 2 cores); pytest-benchmark's output: $STEM.log"
if ! "$VENV/bin/python" -m pytest -q -p no:cacheprovider benchmarks/test_bench_cpu.py \
    --benchmark-json="$STEM.json" --benchmark-save-data \
    --benchmark-columns=median,iqr,rounds ${ARGS[@]+"${ARGS[@]}"} >"$STEM.log" 2>&1; then
  tail -40 "$STEM.log"
  echo "[bench] the benchmark failed (log: $STEM.log)" >&2
  exit 1
fi
"$VENV/bin/python" benchmarks/report.py "$STEM.json" --csv "$CSV" --label "${LABEL:-}"
echo "[bench] appended the rows to $CSV; JSON and log: $STEM.{json,log}"
if [ "$KEEP" = 1 ]; then
  "$VENV/bin/python" benchmarks/plot.py
else
  echo "[bench] (scratch directory, ignored by git; rerun with --keep to append to benchmarks/results/op_cpu.csv)"
fi

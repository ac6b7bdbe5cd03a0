#!/usr/bin/env bash
# One call on a GPU machine: build the extension with its CUDA kernels, run the CUDA tests, run the
# GPU benchmark, print a short table last. Reads the GPU's state (nvidia-smi queries) but never
# changes it. Results: rows appended to benchmarks/results/gpu.csv (the benchmark) and sass.csv
# (SASS per element of this build), LABEL naming what the commit does not say; commit them. Both
# CSVs, the table (bench_gpu.md) and the logs are copied to $OUT when that is set (the device tool
# brings $OUT back: copy its gpu.csv and sass.csv over benchmarks/results/). On a copy of the tree
# without .git, set BENCH_COMMIT to the commit the copy was made from (the rows' commit column).
#
#   bash scripts/gpu_run.sh                 # everything, within ~9.5 minutes (stage time limits)
#   SKIP_TESTS=1 bash scripts/gpu_run.sh    # build + benchmark only
#   SKIP_BUILD=1 SKIP_BENCH=1 bash scripts/gpu_run.sh   # tests on a warm machine, built before
#   BENCH_ARGS="--dtypes float32,bfloat16" bash scripts/gpu_run.sh
#   SKIP_ENTROPY_BENCH=1 bash scripts/gpu_run.sh   # without bench_entropy_models.py (the mixture
#                                                  # at 16x320x16x16, rate, EntropyBottleneck;
#                                                  # needs compressai: run scripts/gpu_wheels.sh
#                                                  # here and carry .whl with the call)
# Environment: PYTHON (default python3), CUDA_HOME (default /usr/local/cuda), TEST_TIMEOUT,
# BENCH_TIMEOUT and ENTROPY_TIMEOUT (seconds, default 260, 230 and 200), ENTROPY_SHAPE, TESTS
# (default tests/contract tests/test_cuda.py tests/test_triton.py tests/test_overhead_paths.py:
# the contract suite for the backends "cuda" and "triton" (LIC_QUANT_TEST_BACKENDS; their bits
# against the CPU kernels' included), then what only the CUDA and Triton kernels have, and the
# eager entry on the machine's torch; one Triton config, no autotuning). The benchmark rewrites
# its results after every shape (the bar's shape first), so a cut-short run keeps them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp/lic_quant_gpu_run}
mkdir -p "$LOGS" benchmarks/results
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ] && command -v nvcc >/dev/null; then
  CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")  # nvcc's toolkit
fi
export PATH="$CUDA_HOME/bin:$PATH" PYTHONUNBUFFERED=1 LIC_QUANT_CUDA=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
status=0

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm,temperature.gpu,power.draw,power.limit --format=csv 2>&1 | tee "$LOGS/gpu_before.csv"
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
nvcc --version | tail -2

echo "== build"
t0=$(date +%s)
if [ "${SKIP_BUILD:-0}" = "1" ] && ls lic_quant/_C*.so >/dev/null 2>&1; then
  echo "build skipped: $(ls lic_quant/_C*.so)"
else
  rm -f lic_quant/_C*.so
  if ! $PY setup.py build_ext --inplace >"$LOGS/build.log" 2>&1; then
    tail -50 "$LOGS/build.log"; echo "BUILD FAILED"; exit 1
  fi
  echo "build: $(( $(date +%s) - t0 )) s"
  # The SASS rows belong to a build: a call with SKIP_BUILD=1 does not append them again.
  $PY tools/cuda_sass_stats.py --csv benchmarks/results/sass.csv --label "${LABEL:-}" >"$LOGS/res_usage.txt" 2>&1
fi

if [ "${SKIP_TESTS:-0}" != "1" ]; then
  echo "== tests"
  t0=$(date +%s)
  TIMEOUT_OPT=""
  $PY -c "import pytest_timeout" 2>/dev/null && TIMEOUT_OPT="--timeout=200"
  LIC_QUANT_EXPECT_CUDA_BUILD=1 LIC_QUANT_TRITON_AUTOTUNE=0 \
    LIC_QUANT_TEST_BACKENDS=${LIC_QUANT_TEST_BACKENDS:-cuda,triton} timeout "${TEST_TIMEOUT:-260}" $PY -m pytest -q -rs -p no:cacheprovider $TIMEOUT_OPT ${TESTS:-tests/contract tests/test_cuda.py tests/test_triton.py tests/test_overhead_paths.py} >"$LOGS/tests.log" 2>&1
  rc=$?
  grep -E "^(FAILED|ERROR)|passed|failed|SKIPPED" "$LOGS/tests.log" | tail -25
  echo "tests: rc=$rc, $(( $(date +%s) - t0 )) s"
  [ $rc -ne 0 ] && status=1
fi

if [ "${SKIP_BENCH:-0}" != "1" ]; then
  echo "== benchmark"
  t0=$(date +%s)
  timeout "${BENCH_TIMEOUT:-230}" $PY benchmarks/bench_gpu.py --csv benchmarks/results/gpu.csv --md "$LOGS/bench_gpu.md" --label "${LABEL:-}" ${BENCH_ARGS:-} >"$LOGS/bench.log" 2>&1
  rc=$?
  echo "benchmark: rc=$rc, $(( $(date +%s) - t0 )) s"
  grep -E "^\[bench\] (device-to-device|triton)" "$LOGS/bench.log"
  [ $rc -ne 0 ] && { tail -30 "$LOGS/bench.log"; status=1; }
fi
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import compressai" 2>/dev/null; then
  # The carried wheels (scripts/gpu_wheels.sh), beside the image's packages rather than over them.
  SITE=/tmp/lic_quant_site
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl >"$LOGS/wheels_install.log" 2>&1; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "the carried wheels did not install (see wheels_install.log)"
  fi
fi
if [ "${SKIP_ENTROPY_BENCH:-0}" != "1" ] && ! $PY -c "import compressai" 2>/dev/null; then
  echo "== entropy models benchmark: skipped, compressai is not installed (its baselines: run"
  echo "   scripts/gpu_wheels.sh where pip works and carry .whl with the call)"
elif [ "${SKIP_ENTROPY_BENCH:-0}" != "1" ]; then
  # The mixture (K = 3 against CompressAI's GaussianMixtureConditional, eager and compiled), the
  # families, the rate output and the EntropyBottleneck, on the device; each part appends its rows
  # when it ends, the EntropyBottleneck first (its bar is GPU-only).
  echo "== entropy models benchmark"
  t0=$(date +%s)
  timeout "${ENTROPY_TIMEOUT:-200}" $PY benchmarks/bench_entropy_models.py --device cuda \
    --shape "${ENTROPY_SHAPE:-16x320x16x16}" --rounds 20 --parts eb,families,rate \
    --eb-shapes 16x128x4x4,16x192x8x8,16x192x16x16 \
    --csv benchmarks/results/entropy_models.csv --rate-csv benchmarks/results/rate_output.csv \
    --eb-csv benchmarks/results/entropy_bottleneck.csv --label "${LABEL:-}" \
    >"$LOGS/bench_entropy.log" 2>&1
  rc=$?
  echo "entropy models benchmark: rc=$rc, $(( $(date +%s) - t0 )) s"
  grep -E "x$|^(family|shape|provider)" "$LOGS/bench_entropy.log" | tail -30
  [ $rc -ne 0 ] && { tail -30 "$LOGS/bench_entropy.log"; status=1; }
fi
nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$LOGS/gpu_after.csv" 2>&1
cp benchmarks/results/gpu.csv benchmarks/results/sass.csv benchmarks/results/entropy_models.csv \
  benchmarks/results/rate_output.csv benchmarks/results/entropy_bottleneck.csv "$LOGS/" 2>/dev/null
if [ -s "$LOGS/bench_gpu.md" ]; then
  echo "== results: benchmarks/results/gpu.csv, sass.csv, entropy_models.csv, rate_output.csv, entropy_bottleneck.csv (commit them)"
  cat "$LOGS/bench_gpu.md"
fi
exit $status

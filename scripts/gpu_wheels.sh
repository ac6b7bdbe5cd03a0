#!/usr/bin/env bash
# Run here, where pip reaches a registry, before a GPU call: the Python packages that
# scripts/gpu_run.sh needs and the GPU machine's image lacks, as Python 3.12 wheels in .whl/
# (ignored by git). Name .whl in the call's carry; gpu_run.sh installs them there. CompressAI is
# the baseline of bench_entropy_models.py; `import compressai` also imports pytorch_msssim, and
# its other imports (torchvision, torch_geometric, einops, pandas, scipy, tqdm) are in the image
# (/work/.library/device/KINDS.md lists it).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl compressai==1.2.8 pytorch-msssim==1.0.0
ls -l .whl

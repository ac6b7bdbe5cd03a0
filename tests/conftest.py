import os
import sys

# Tests import the package from the repository root (built in place by scripts/test.sh).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402  (does not import triton)

# Without a GPU the Triton kernels run in Triton's interpreter. triton.jit decides interpretation
# when a function is decorated, and triton's own jit functions (tl.rand, ...) are decorated when
# triton is first imported, which torch.compile may do in any test module: so set it here, first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU one fixed launch config, so that each constexpr variant of the Triton kernels compiles
# once; tests/test_triton.py's `autotune` fixture switches the autotuner (six configs) back on.
os.environ.setdefault("LIC_QUANT_TRITON_AUTOTUNE", "0")

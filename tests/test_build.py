"""The build itself: the C++ ops are registered, and the CUDA kernels are compiled into the
extension whenever the build was asked to include them (scripts/test.sh sets
LIC_QUANT_EXPECT_CUDA_BUILD=1 when nvcc is present, as on CI)."""
import os

import pytest
import torch

import lic_quant as lq


def test_cpu_ops_registered():
    assert lq.extension_available(), lq._ops.EXTENSION_ERROR
    for op in ("quantize_forward", "quantize_backward", "uniform_noise"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lic_quant::{op}", "CPU")


@pytest.mark.skipif(os.environ.get("LIC_QUANT_EXPECT_CUDA_BUILD") != "1",
                    reason="CPU-only build requested")
def test_cuda_kernels_compiled_in():
    for op in ("quantize_forward", "quantize_backward", "uniform_noise"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lic_quant::{op}", "CUDA"), op
    assert lq.cuda_kernels_built()

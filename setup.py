"""Builds lic_quant._C: the C++ CPU kernels always, the CUDA kernels when a CUDA toolkit and a CUDA
build of torch are present.

Environment:
  LIC_QUANT_CUDA=1 / 0   force the CUDA sources on or off (default: auto-detect)
  TORCH_CUDA_ARCH_LIST   CUDA architectures (default: sm_80, sm_90 and PTX for newer GPUs)
  CUDA_HOME              the CUDA toolkit (torch may guess it wrong where nvcc is a wrapper)
"""
import glob
import os
import sys

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


def cuda_wanted():
    flag = os.environ.get("LIC_QUANT_CUDA", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    available = cpp_extension.CUDA_HOME is not None and __import__("torch").version.cuda is not None
    if flag in ("1", "true", "yes", "on"):
        if not available:
            sys.exit("LIC_QUANT_CUDA=1 but no CUDA toolkit (CUDA_HOME) or no CUDA build of torch")
        return True
    return available


def extra_cuda_includes():
    # pip's CUDA wheels (nvidia-*-cu13) hold headers that torch's CUDA headers include.
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    return sorted({d for d in dirs if os.path.isdir(d)})


def extension():
    # Contraction off: `rand - 0.5f` and every other step round on their own, so the CPU,
    # CUDA and Triton kernels produce the same bits (SPEC section 3).
    cxx = ["-O3", "-std=c++20", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
           "-fopenmp"]  # at::parallel_for is an OpenMP pragma in the ATen headers
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/cpu/quantize_cpu.cpp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not cuda_wanted():
        return cpp_extension.CppExtension(
            "lic_quant._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
            py_limited_api=False)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    nvcc = ["-O3", "-std=c++20", "--fmad=false", "-lineinfo", "--expt-relaxed-constexpr"]
    return cpp_extension.CUDAExtension(
        "lic_quant._C", sources + sorted(glob.glob("csrc/cuda/*.cu")),
        include_dirs=include_dirs + extra_cuda_includes(),
        extra_compile_args={"cxx": cxx + ["-DLIC_QUANT_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=["-fopenmp"])


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)

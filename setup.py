"""Builds lic_quant._C: the C++ CPU kernels always, the CUDA kernels when a usable CUDA toolkit and
a CUDA build of torch are present.

Environment:
  LIC_QUANT_CUDA=1 / 0   CUDA sources required / off (default: built when a usable toolkit is
                         found, otherwise the CPU kernels alone, with one warning saying why)
  TORCH_CUDA_ARCH_LIST   CUDA architectures (default: sm_80, sm_90 and PTX for newer GPUs)
  CUDA_HOME / CUDA_PATH  the CUDA toolkit to try first

Finding the toolkit: torch guesses CUDA_HOME from the directory above the first `nvcc` on the
PATH, which is wrong where that nvcc is a wrapper script (e.g. /usr/local/bin/nvcc exec'ing
/usr/local/cuda-13.0/bin/nvcc makes torch look for libcudart in /usr/local/lib64). So the build
tries, in order: CUDA_HOME/CUDA_PATH, the directory of nvcc's resolved path, the directory nvcc
itself reports (`nvcc --dryrun` prints the `_HERE_` of the real binary), and /usr/local/cuda; it
takes the first where nvcc runs, its CUDA major version matches torch's, and cuda_runtime.h and
libcudart are present, before anything is compiled.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import warnings

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"
FALLBACK_CUDA_HOME = "/usr/local/cuda"


# --------------------------------------------------------------------------------------------
# Finding a usable CUDA toolkit (pure functions of the environment: tests/test_setup_toolkit.py)
# --------------------------------------------------------------------------------------------

def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def nvcc_reported_home(nvcc: str, run=_run) -> str | None:
    """The toolkit directory the nvcc binary behind `nvcc` (a wrapper or not) reports: its
    dry run prints `#$ _HERE_=<toolkit>/bin`, resolved past any wrapper script."""
    try:
        proc = run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull])
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ _HERE_=(.+)$", proc.stdout + proc.stderr, re.MULTILINE)
    return os.path.dirname(match.group(1).strip()) if match else None


def candidate_homes(env=os.environ, which=shutil.which, run=_run) -> list[str]:
    """The toolkit directories to try, first choice first, without duplicates."""
    found = [env.get("CUDA_HOME"), env.get("CUDA_PATH")]
    nvcc = which("nvcc")
    if nvcc:
        found.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        found.append(nvcc_reported_home(nvcc, run))
    found.append(FALLBACK_CUDA_HOME)
    homes = []
    for home in found:
        if home and os.path.realpath(home) not in {os.path.realpath(h) for h in homes}:
            homes.append(home)
    return homes


def cudart_dir(home: str) -> str:
    """Where torch's CUDAExtension links libcudart from (lib64, or lib when lib64 is absent)."""
    lib64, lib = os.path.join(home, "lib64"), os.path.join(home, "lib")
    return lib if not os.path.exists(lib64) and os.path.exists(lib) else lib64


def toolkit_problems(home: str, torch_cuda: str | None, run=_run) -> list[str]:
    """What keeps `home` from building the CUDA sources; empty when it is usable."""
    nvcc = os.path.join(home, "bin", "nvcc")
    if not os.path.isfile(nvcc):
        return [f"no {nvcc}"]
    problems = []
    try:
        proc = run([nvcc, "--version"])
        version = re.search(r"release (\d+)\.(\d+)", proc.stdout)
        if proc.returncode != 0 or version is None:
            problems.append(f"{nvcc} --version failed: {(proc.stderr or proc.stdout).strip()[:200]}")
        elif torch_cuda and version.group(1) != torch_cuda.split(".")[0]:
            problems.append(f"{nvcc} is CUDA {version.group(1)}.{version.group(2)} but torch was "
                            f"built with CUDA {torch_cuda} (the major versions must match)")
    except (OSError, subprocess.SubprocessError) as exc:
        problems.append(f"{nvcc} does not run ({exc})")
    header = os.path.join(home, "include", "cuda_runtime.h")
    if not os.path.isfile(header):
        problems.append(f"no {header}")
    libdir = cudart_dir(home)
    if not glob.glob(os.path.join(libdir, "libcudart.so*")):
        problems.append(f"no libcudart.so in {libdir}")
    return problems


def find_cuda_toolkit(torch_cuda: str | None, env=os.environ, which=shutil.which, run=_run):
    """(the first usable toolkit directory or None, {tried directory: its problems})."""
    tried = {}
    for home in candidate_homes(env, which, run):
        problems = toolkit_problems(home, torch_cuda, run)
        if not problems:
            return home, tried
        tried[home] = problems
    return None, tried


def cuda_request(env=os.environ) -> bool | None:
    """LIC_QUANT_CUDA: True (required), False (off) or None (when usable)."""
    flag = env.get("LIC_QUANT_CUDA", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        return True
    if flag:
        raise SystemExit(f"LIC_QUANT_CUDA must be 1 or 0; got {env['LIC_QUANT_CUDA']!r}")
    return None


def plan_cuda_build(torch_cuda: str | None, env=os.environ, which=shutil.which, run=_run):
    """(toolkit directory or None, why not): None builds the CPU kernels only. Raises SystemExit
    when LIC_QUANT_CUDA=1 and the CUDA sources cannot be built."""
    request = cuda_request(env)
    if request is False:
        return None, "LIC_QUANT_CUDA=0"
    if torch_cuda is None:
        reason = "the installed torch is a CPU build (torch.version.cuda is None)"
        home, tried = None, {}
    else:
        home, tried = find_cuda_toolkit(torch_cuda, env, which, run)
        if home is not None:
            return home, None
        reason = "no usable CUDA toolkit (" + " | ".join(
            f"{h}: " + "; ".join(p) for h, p in tried.items()) + ")"
    if request is True:
        raise SystemExit(f"lic_quant: LIC_QUANT_CUDA=1 but the CUDA kernels cannot be built: {reason}."
                         " Set CUDA_HOME to the toolkit directory (the one holding bin/nvcc, "
                         "include/cuda_runtime.h and lib64/libcudart.so).")
    return None, reason


def extra_cuda_includes() -> list[str]:
    # pip's CUDA wheels (nvidia-*-cu13) hold headers that torch's CUDA headers include.
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    return sorted({d for d in dirs if os.path.isdir(d)})


# --------------------------------------------------------------------------------------------
# The extension
# --------------------------------------------------------------------------------------------

def extension():
    import torch
    from torch.utils import cpp_extension

    # Contraction off: `rand - 0.5f` and every other step round on their own, so the CPU,
    # CUDA and Triton kernels produce the same bits (docs/spec.md section 3).
    cxx = ["-O3", "-std=c++20", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
           "-fopenmp"]  # at::parallel_for is an OpenMP pragma in the ATen headers
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/host_scalars.cpp",
               "csrc/cpu/quantize_cpu.cpp", "csrc/cpu/mixture_cpu.cpp",
               "csrc/cpu/entropy_bottleneck_cpu.cpp", "csrc/cpu/clamp_limits.cpp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    # setuptools skips an extension whose sources are older than the .so; the headers hold the
    # math, so an edited header must count too (ninja then recompiles only what includes it).
    depends = sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True))
    home, why_not = plan_cuda_build(torch.version.cuda)
    if home is None:
        if why_not != "LIC_QUANT_CUDA=0":
            message = (f"lic_quant: building the CPU kernels only ({why_not}). Set CUDA_HOME to "
                       "a CUDA toolkit to build the CUDA kernels, or LIC_QUANT_CUDA=1 to make "
                       "this an error.")
            warnings.warn(message, stacklevel=1)
        return cpp_extension.CppExtension(
            "lic_quant._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"], depends=depends, py_limited_api=False)
    # torch computed its CUDA_HOME at import (possibly the wrapper's guess): point it, and any
    # nvcc it starts, at the toolkit that passed the checks.
    os.environ["CUDA_HOME"] = home
    cpp_extension.CUDA_HOME = home
    print(f"lic_quant: building the CPU and CUDA kernels with the CUDA toolkit in {home}",
          file=sys.stderr)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    nvcc = ["-O3", "-std=c++20", "--fmad=false", "-lineinfo", "--expt-relaxed-constexpr"]
    return cpp_extension.CUDAExtension(
        "lic_quant._C", sources + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))),
        include_dirs=include_dirs + extra_cuda_includes(),
        extra_compile_args={"cxx": cxx + ["-DLIC_QUANT_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=["-fopenmp"], depends=depends)


if __name__ == "__main__":  # also under pip: setuptools runs this file as __main__
    from setuptools import setup
    from torch.utils import cpp_extension

    setup(
        ext_modules=[extension()],
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    )

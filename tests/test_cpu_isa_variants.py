"""Every CPU clone gives the same bits (docs/spec.md section 3: bit-reproducible on any machine).

The CPU kernels are built as target_clones (AVX-512, AVX2, baseline x86-64) and the loader picks
one for the machine, so a test run only ever checks the clone of the machine it runs on. This
module builds the extension twice more, CPU kernels only, with fewer clones
(-DLQ_CPU_CLONES_AVX2: AVX2 and baseline; -DLQ_CPU_CLONES_BASELINE: baseline only, where even fma
is libm's software one), runs the same forward and backward calls through each build in a
subprocess, and compares every output bit for bit with the regular build's. Inputs include ties,
huge and tiny values, NaN and inf, block tails, every family, mode and dtype, the rate output and
a K = 3 mixture and the EntropyBottleneck. About two minutes on 2
cores (the two builds).
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch

import lic_quant as lq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [
    pytest.mark.skipif(not lq.extension_available(), reason="C++ extension not built"),
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                       reason="the clones are x86-64 ones"),
]

# Runs in a subprocess with one build of lic_quant on its path; writes every output to argv[1].
SCRIPT = r"""
import sys
import torch
import lic_quant

ops = torch.ops.lic_quant
N = 3 * 1024 + 7  # several blocks of 256 and a tail


def inputs(dtype):
    g = torch.Generator().manual_seed(20261126)
    y = torch.randn(N, generator=g, dtype=torch.float64) * 4.0
    s = torch.rand(N, generator=g, dtype=torch.float64) * 3.0 + 0.01
    m = torch.randn(N, generator=g, dtype=torch.float64) * 2.0
    k = torch.arange(-40, 40, dtype=torch.float64)
    y[:80] = k + 0.5  # ties of the rounding
    m[:80] = 0.0
    y[80:90] = torch.tensor([1e30, -1e30, 3e38, -3e38, 1e-40, -0.0, 0.0, float("nan"),
                             float("inf"), -float("inf")], dtype=torch.float64)
    s[90:100] = torch.tensor([0.0, 1e-30, 0.11, 0.1099, 1e6, 1e9, float("nan"), float("inf"),
                              2.0 ** -126, 65000.0], dtype=torch.float64)
    m[100:104] = torch.tensor([float("nan"), 1e30, -0.0, 2.0 ** 23], dtype=torch.float64)
    y[104:108] = torch.tensor([2.0 ** 23 + 0.5, 2.0 ** 22 + 0.5, 2.0 ** 52 + 0.5, -2.0 ** 22 - 0.5],
                              dtype=torch.float64)
    g_yhat = torch.randn(N, generator=g, dtype=torch.float64)
    g_lik = torch.randn(N, generator=g, dtype=torch.float64) * 1e3
    lik_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return (y.to(dtype), s.to(dtype), m.to(dtype), g_yhat.to(dtype), g_lik.to(lik_dtype))


out = {}
seed = torch.tensor(-7_000_000_000_123, dtype=torch.int64)
temperature = torch.tensor(0.375, dtype=torch.float64)
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    y, s, m, g_yhat, g_lik = inputs(dtype)
    for family in ("gaussian", "laplace", "logistic"):
        for mode in ("noise", "ste", "mixed", "sua"):
            for zero_center in (True, False):
                for means in (m, None):
                    key = f"{dtype}-{family}-{mode}-{zero_center}-{means is not None}"
                    args = (seed, temperature, mode, 0.11, 1e-9, zero_center)
                    y_hat, lik = ops.quantize_forward(y, s, means, *args, family)
                    grads = ops.quantize_backward(g_yhat, g_lik, y, s, means, *args,
                                                  [True, True, means is not None], family)
                    out[key] = [y_hat, lik, *grads]
    # rate=True (section 8): three samples of 1024 elements, one bits' gradient per sample.
    yr, sr, mr, gr = (t[:3072].view(3, 1024) for t in (y, s, m, g_yhat))
    g_bits = torch.tensor([1.0, -0.5, 2.0], dtype=lik.dtype)
    for family in ("gaussian", "laplace", "logistic"):
        args = (seed, temperature, "mixed", 0.11, 1e-9, True)
        y_hat, bits = ops.quantize_forward(yr, sr, mr, *args, family, True)
        grads = ops.quantize_backward(gr, g_bits, yr, sr, mr, *args, [True, True, True], family,
                                      True)
        out[f"{dtype}-{family}-rate"] = [y_hat, bits, *grads]
    # A K = 3 mixture (section 7), probabilities and logits.
    ks, km, kw = s.expand(3, N) * torch.tensor([[1.0], [0.5], [2.0]]).to(dtype), \
        m.expand(3, N) + torch.tensor([[0.0], [1.5], [-2.0]]).to(dtype), \
        torch.tensor([[0.2], [0.5], [0.3]]).to(dtype).expand(3, N).contiguous()
    for logits in (False, True):
        args = (seed, temperature, "sua", 0.11, 1e-9, True, "laplace", logits)
        y_hat, lik = ops.mixture_quantize_forward(y, ks, km, kw, *args)
        grads = ops.mixture_quantize_backward(g_yhat, g_lik, y, ks, km, kw, *args,
                                              [True, True, True, True])
        out[f"{dtype}-mixture-{logits}"] = [y_hat, lik, *grads]
    # The EntropyBottleneck (section 9): 3 channels, a block tail, ties, NaN, huge values;
    # CompressAI's default MLP shapes with parameters of both signs.
    gp = torch.Generator().manual_seed(9)
    shapes = [(3, 3, 1), (3, 3, 1)] + [(3, 3, 3), (3, 3, 1)] * 3 + [(3, 1, 3), (3, 1, 1)]
    mats, biases, facs = [], [], []
    for i in range(5):
        mats.append(torch.randn(shapes[2 * i], generator=gp).to(dtype))
        biases.append(torch.randn(shapes[2 * i + 1], generator=gp).to(dtype))
        if i < 4:
            facs.append(torch.randn(shapes[2 * i + 1], generator=gp).to(dtype))
    ze = y[:3 * 1026].view(1, 3, 1026)  # 1026: a tail after the 32-element blocks
    me = m[:3].clone()
    gze, gle = g_yhat[:3 * 1026].view(1, 3, 1026), g_lik[:3 * 1026].view(1, 3, 1026)
    for mode in ("noise", "ste", "mixed", "sua"):
        args = (seed, temperature, mode, 1e-9)
        z_hat, lik = ops.entropy_bottleneck_forward(ze, me, mats, biases, facs, *args)
        gz, gm, gb, gf = ops.entropy_bottleneck_backward(gze, gle, ze, me, mats, biases, facs,
                                                         *args, [True] * 4)
        out[f"{dtype}-eb-{mode}"] = [z_hat, lik, gz, *gm, *gb, *gf]
out["noise"] = [ops.uniform_noise(seed, [N])]
torch.save(out, sys.argv[1])
"""


def _bits(t: torch.Tensor) -> torch.Tensor:
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(view)


def _outputs(pythonpath: str, tmp_path, name: str) -> dict:
    path = tmp_path / f"{name}.pt"
    env = dict(os.environ, PYTHONPATH=pythonpath)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(path)


def _build(define: str, tmp_path) -> str:
    """The CPU-only extension built with `define`, as an importable package; its path."""
    lib, temp, pkg = tmp_path / "lib", tmp_path / "temp", tmp_path / "pkg"
    env = dict(os.environ, CFLAGS=f"-D{define}", LIC_QUANT_CUDA="0",
               MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(lib),
                           "--build-temp", str(temp)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (built,) = (lib / "lic_quant").glob("_C*.so")
    (pkg / "lic_quant").mkdir(parents=True)
    for name in os.listdir(os.path.join(ROOT, "lic_quant")):
        if name.endswith(".py"):
            shutil.copy(os.path.join(ROOT, "lic_quant", name), pkg / "lic_quant" / name)
    shutil.copy(built, pkg / "lic_quant" / built.name)
    return str(pkg)


def _vector_registers(so_path: str) -> set:
    """Which of ymm and zmm the library's code uses (objdump), or None without objdump."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", so_path], capture_output=True,
                          text=True, timeout=300).stdout
    return {reg for reg in ("ymm", "zmm") if f"%{reg}" in text}


@pytest.fixture(scope="module")
def regular_outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regular")
    return _outputs(ROOT, tmp, "regular")


@pytest.mark.parametrize("define,allowed", [("LQ_CPU_CLONES_AVX2", {"ymm"}),
                                            ("LQ_CPU_CLONES_BASELINE", set())])
def test_clone_gives_the_bits_of_the_regular_build(define, allowed, regular_outputs,
                                                   tmp_path):
    pkg = _build(define, tmp_path)
    registers = _vector_registers(next((tmp_path / "pkg" / "lic_quant").glob("_C*.so")).as_posix())
    if registers is not None:  # the define took effect: no wider code than the clones allow
        assert registers <= allowed, registers
    got = _outputs(pkg, tmp_path, define)
    assert got.keys() == regular_outputs.keys()
    for key, want in regular_outputs.items():
        for i, (a, b) in enumerate(zip(got[key], want)):
            assert a.dtype == b.dtype and a.shape == b.shape, (key, i)
            assert torch.equal(_bits(a), _bits(b)), (key, i)

"""The cheap eager path (csrc/ops.cpp quantize_eager, the C++ autograd of csrc/autograd.cpp, seeds
and temperatures made on the host) gives exactly what the checked tensor path gives, hands what it
does not handle to that path, and the package never falls back to the reference silently."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import lic_quant as lq
from helpers import make_inputs, make_upstream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_cpp = pytest.mark.skipif(not lq.extension_available(), reason="C++ extension not built")


def _run(y, s, m, g_yhat, g_lik, **kw):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (y, s, m)]
    y_hat, lik = lq.gaussian_quantize(*leaves, backend="cpu", **kw)
    torch.autograd.backward([y_hat, lik], [g_yhat, g_lik])
    return [y_hat.detach(), lik.detach()] + [t.grad if t is not None else None for t in leaves]


def _same(a, b):
    return all((x is None and z is None) or torch.equal(x, z) for x, z in zip(a, b))


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", lq.MODES)
@pytest.mark.parametrize("with_means,zero_center", [(True, True), (True, False), (False, True)])
def test_host_values_equal_tensor_arguments(dtype, mode, with_means, zero_center):
    """seed/temperature as Python values (made into tensors in C++) against 0-dim tensors (the
    op as it is called under torch.compile): values and gradients bit for bit."""
    y, s, m = make_inputs((3, 5, 7), dtype, with_means=with_means)
    lik_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    g_yhat, g_lik = make_upstream(y.shape, dtype, lik_dtype)
    kw = dict(mode=mode, zero_center=zero_center)
    host = _run(y, s, m, g_yhat, g_lik, seed=2**40 + 7, temperature=0.3, **kw)
    tensors = _run(y, s, m, g_yhat, g_lik, seed=torch.tensor(2**40 + 7),
                   temperature=torch.tensor(0.3, dtype=torch.float64), **kw)
    mixed = _run(y, s, m, g_yhat, g_lik, seed=torch.tensor(2**40 + 7), temperature=0.3, **kw)
    direct = torch.ops.lic_quant.quantize_forward(
        y, s, m, torch.tensor(2**40 + 7), torch.tensor(0.3, dtype=torch.float64), mode, 0.11,
        1e-9, zero_center)
    assert _same(host, tensors) and _same(host, mixed)
    assert torch.equal(host[0], direct[0]) and torch.equal(host[1], direct[1])


@needs_cpp
def test_seed_none_follows_manual_seed_like_randint():
    """The seed drawn on the host is torch.randint's own draw, so torch.manual_seed governs it and
    compiled graphs that draw with randint (Inductor's fallback_random) see the same seed."""
    y, s, m = make_inputs((4, 9), torch.float32)
    torch.manual_seed(5)
    a = lq.gaussian_quantize(y, s, m, mode="noise", backend="cpu")
    torch.manual_seed(5)
    seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)
    b = lq.gaussian_quantize(y, s, m, mode="noise", seed=seed, backend="cpu")
    torch.manual_seed(5)
    c = lq.gaussian_quantize(y, s, m, mode="noise", seed=lq.make_seed(None, "cpu"),
                             backend="cpu")
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
    torch.manual_seed(5)
    assert torch.ops.lic_quant.draw_seed(torch.device("cpu")) == int(seed)


@needs_cpp
def test_paths_the_eager_entry_hands_over():
    """Tensor subclasses, unsigned 64-bit seeds, int temperatures and an active torch function
    mode take the Python path; results agree with the eager entry's."""
    y, s, m = make_inputs((2, 6), torch.float32)
    want = lq.gaussian_quantize(y, s, m, mode="sua", temperature=1.0, seed=-1, backend="cpu")

    class Sub(torch.Tensor):
        pass

    got = [
        lq.gaussian_quantize(y.as_subclass(Sub), s, m, temperature=1.0, seed=-1, backend="cpu"),
        lq.gaussian_quantize(y, s, m, temperature=1, seed=2**64 - 1, backend="cpu"),
        lq.gaussian_quantize(y, s, m, temperature=1.0, seed=torch.tensor(-1, dtype=torch.int64),
                             backend="auto"),
    ]
    class PassThrough(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with PassThrough():
        got.append(lq.gaussian_quantize(y, s, m, temperature=1.0, seed=-1, backend="cpu"))
    for a, b in got:
        assert torch.equal(a.as_subclass(torch.Tensor), want[0])
        assert torch.equal(b.as_subclass(torch.Tensor), want[1])


@needs_cpp
def test_autograd_node_edges_and_saved_tensor_checks():
    """The hand-written node (csrc/autograd.cpp): one node for both outputs with an edge per
    differentiable input, buffers freed after a backward, and the version checks of saved tensors
    (an in-place change of y or of the seed between forward and backward would give gradients of
    other values or of other noise)."""
    y, s, m = make_inputs((3, 4), torch.float32)
    leaves = [t.clone().requires_grad_() for t in (y, s, m)]
    y_hat, lik = lq.gaussian_quantize(*leaves, seed=1, backend="cpu")
    fn = y_hat.grad_fn
    assert lik.grad_fn is fn and fn.name() == "QuantizeBackward"
    assert [f.variable for f, _ in fn.next_functions] == leaves
    _, lik2 = lq.gaussian_quantize(leaves[0], s, seed=1, backend="cpu")  # sigma needs no grad
    assert len(lik2.grad_fn.next_functions) == 2 and lik2.grad_fn.next_functions[1][0] is None

    lik.sum().backward()
    with pytest.raises(RuntimeError, match="second time"):
        lik.sum().backward()

    z = leaves[0] * 1
    _, lik = lq.gaussian_quantize(z, leaves[1], seed=1, backend="cpu")
    z.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        lik.sum().backward()
    seed = torch.tensor(5)
    _, lik = lq.gaussian_quantize(leaves[0], leaves[1], seed=seed, backend="cpu")
    seed.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        lik.sum().backward()


@needs_cpp
def test_backend_names_the_eager_entry_leaves_to_python():
    """The C entry runs backend "auto" and the backend of y's device only; the others reach the
    Python checks and their messages."""
    y, s, _ = make_inputs((2, 3), torch.float32)
    with pytest.raises((RuntimeError, ValueError), match="backend='cuda'"):
        lq.gaussian_quantize(y, s, backend="cuda")
    ref = lq.gaussian_quantize(y, s, mode="noise", seed=4, backend="reference")
    cpu = lq.gaussian_quantize(y, s, mode="noise", seed=4, backend="cpu")
    assert torch.equal(ref[0], cpu[0])


# ---------------------------------------------------------------------------------------------
# No silent fallback (issue 10, item 2)


def test_missing_extension_warns_once_with_reason_and_fix(tmp_path):
    """Python started where lic_quant has no compiled _C (a checkout without a build) warns on
    the first backend='auto' call, naming the extension, the real import error and the fix."""
    pkg = tmp_path / "lic_quant"
    shutil.copytree(os.path.join(ROOT, "lic_quant"), pkg,
                    ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))
    script = textwrap.dedent("""
        import warnings
        import torch
        import lic_quant as lq
        assert not lq.extension_available()
        print("ERROR:", repr(lq._ops.EXTENSION_ERROR))
        y, s = torch.randn(8), torch.rand(8) + 0.2
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lq.gaussian_quantize(y, s, seed=1)
            lq.gaussian_quantize(y, s, seed=2)
            lq.gaussian_quantize(y, s, seed=3, backend="reference")  # asked for: no warning
        print("COUNT:", len(caught))
        for w in caught:
            print("WARNING:", w.category.__name__, w.message)
        try:
            lq.gaussian_quantize(y, s, backend="cpu")
        except RuntimeError as exc:
            print("CPU:", exc)
    """)
    # -S: no site hooks, so an editable install of this checkout (its import finder) cannot
    # supply the built package; torch comes from its own directory on PYTHONPATH.
    site_packages = os.path.dirname(os.path.dirname(torch.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), site_packages]))
    proc = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "circular import" not in out
    assert "No module named 'lic_quant._C'" in out.split("COUNT:")[0]
    assert "COUNT: 1" in out
    warning = [line for line in out.splitlines() if line.startswith("WARNING:")][0]
    assert "RuntimeWarning" in warning and "lic_quant._C" in warning
    assert "No module named 'lic_quant._C'" in warning
    assert "pip install --no-build-isolation ." in warning
    assert "python setup.py build_ext --inplace" in warning
    assert "reference" in warning
    cpu = [line for line in out.splitlines() if line.startswith("CPU:")][0]
    assert "No module named 'lic_quant._C'" in cpu and "build_ext --inplace" in cpu


# ---------------------------------------------------------------------------------------------
# Triton under Inductor


_FP64_BOUNDS_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as exc:
    print(json.dumps({"unavailable": str(exc)})); sys.exit(0)
from lic_quant import _triton_kernels as K
# The signature Inductor gives a user kernel: Python floats as fp64 (triton_utils.signature_of).
sig = {"y_ptr": "*fp32", "mu_ptr": "*fp32", "sigma_ptr": "*fp32", "seed_ptr": "*i64",
       "temp_ptr": "*fp64", "y_hat_ptr": "*fp32", "lik_ptr": "*fp32", "n_elements": "i32",
       "index_base": "i64", "scale_bound": "fp64", "likelihood_bound": "fp64",
       "MODE": "constexpr", "ZERO_CENTER": "constexpr", "HAS_MEANS": "constexpr",
       "IS_BF16": "constexpr", "ON_GPU": "constexpr", "BLOCK": "constexpr",
       "FAMILY": "constexpr", "RATE": "constexpr", "ALIGNED": "constexpr",
       "sample_size": "constexpr", "chunks": "constexpr"}
# Every parameter, defaulted ones too (ASTSource takes no defaults). rate=False launches pass
# sample_size = chunks = 1 (Triton specializes ints equal to 1 as constants); rate=True ones write
# float64 chunk sums and pass both as integers.
rate_sig = dict(sig, lik_ptr="*fp64", sample_size="i64", chunks="i64")
try:
    for family in range(len(K.FAMILIES)):  # every family's variant, with and without rate
        for rate in (False, True):
            const = dict(MODE=3, ZERO_CENTER=True, HAS_MEANS=True, IS_BF16=False, ON_GPU=True,
                         BLOCK=1024, FAMILY=family, RATE=rate, ALIGNED=not rate)
            if not rate:
                const.update(sample_size=1, chunks=1)
            s = rate_sig if rate else sig
            src = ASTSource(fn=K.quantize_forward_kernel, signature=s,
                            constexprs={(list(s).index(k),): v for k, v in const.items()})
            triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    # The mixture kernels (docs/spec.md section 7), forward and backward, with and without rate.
    layouts = lambda names: {f"{t}_{p}": "i32" for t in names for p in ("stride", "outer", "inner")}
    ints = {"n_elements": "i32", "index_base": "i64", "scale_bound": "fp64",
            "likelihood_bound": "fp64", "K": "i32", "inner": "i32"}
    fwd = {"y_ptr": "*fp32", "mu_ptr": "*fp32", "sigma_ptr": "*fp32", "w_ptr": "*fp32",
           "seed_ptr": "*i64", "temp_ptr": "*fp64", "y_hat_ptr": "*fp32", "lik_ptr": "*fp32",
           **ints, **layouts(("mu", "sigma", "w")),
           **dict.fromkeys(("MODE", "ZERO_CENTER", "LOGITS", "IS_BF16", "ON_GPU", "BLOCK",
                            "FAMILY", "LAYOUT", "RATE", "ALIGNED", "sample_size", "chunks"),
                           "constexpr")}
    bwd = {"g_yhat_ptr": "*fp32", "g_lik_ptr": "*fp32", "y_ptr": "*fp32", "mu_ptr": "*fp32",
           "sigma_ptr": "*fp32", "w_ptr": "*fp32", "seed_ptr": "*i64", "temp_ptr": "*fp64",
           "gy_ptr": "*fp32", "gmu_ptr": "*fp32", "gs_ptr": "*fp32", "gw_ptr": "*fp32",
           **ints, **layouts(("mu", "sigma", "w", "gmu", "gs", "gw")),
           **dict.fromkeys(("MODE", "ZERO_CENTER", "LOGITS", "HAS_GYHAT", "NEED_GY", "NEED_GMU",
                            "NEED_GS", "NEED_GW", "IS_BF16", "ON_GPU", "BLOCK", "FAMILY",
                            "LAYOUT", "RATE", "sample_size"), "constexpr")}
    common = dict(MODE=3, ZERO_CENTER=True, LOGITS=True, IS_BF16=False, ON_GPU=True,
                  BLOCK=1024, FAMILY=0, LAYOUT=1)
    grads = dict(HAS_GYHAT=True, NEED_GY=True, NEED_GMU=True, NEED_GS=True, NEED_GW=True)
    for rate in (False, True):
        chunked = dict(lik_ptr="*fp64", sample_size="i64", chunks="i64") if rate else {}
        sizes = {} if rate else dict(sample_size=1, chunks=1)
        for fn, s, const in (
                (K.mixture_forward_kernel, dict(fwd, **chunked),
                 dict(common, RATE=rate, ALIGNED=not rate, **sizes)),
                (K.mixture_backward_kernel, dict(bwd, sample_size="i64") if rate else bwd,
                 dict(common, **grads, RATE=rate, **({} if rate else dict(sample_size=1))))):
            src = ASTSource(fn=fn, signature=s,
                            constexprs={(list(s).index(k),): v for k, v in const.items()})
            triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    ok, why = True, ""
except (TypeError, AttributeError, KeyError) as exc:  # another Triton's compile API
    print(json.dumps({"unavailable": repr(exc)[:300]})); sys.exit(0)
except Exception as exc:
    if "ptxas" in str(exc).lower():
        print(json.dumps({"unavailable": str(exc)[:300]})); sys.exit(0)
    chain, e = [], exc
    while e is not None:
        chain.append(str(e).strip().splitlines()[-1] if str(e).strip() else repr(e))
        e = e.__cause__
    ok, why = False, " <- ".join(chain)[-2000:]
print(json.dumps({"compiles": ok, "why": why}))
"""


def test_triton_inductor_route_matches_the_kernels():
    """Inductor passes the kernels' scale_bound and likelihood_bound as fp64, and triton_ops lets
    torch.compile trace into the kernels: they must compile with fp64 bounds for sm_90 (checked
    offline with Triton's compiler, no GPU)."""
    pytest.importorskip("triton")
    import json

    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", _FP64_BOUNDS_SCRIPT, ROOT], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "unavailable" in result:
        pytest.skip(f"no offline Triton compiler for sm_90: {result['unavailable']}")
    assert result["compiles"], result["why"]


@needs_cpp
def test_scalar_tensors_op():
    seed, temp = torch.ops.lic_quant.scalar_tensors(torch.device("cpu"), -5, 0.25)
    assert seed.dtype == torch.int64 and seed.dim() == 0 and int(seed) == -5
    assert temp.dtype == torch.float64 and temp.dim() == 0 and float(temp) == 0.25
    torch.manual_seed(9)
    drawn, _ = torch.ops.lic_quant.scalar_tensors(torch.device("cpu"), None, 1.0)
    torch.manual_seed(9)
    assert int(drawn) == int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    with pytest.raises(RuntimeError, match="meta"):
        torch.ops.lic_quant.scalar_tensors(torch.device("meta"), 1, 0.5)

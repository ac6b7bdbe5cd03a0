"""docs/spec.md section 4, errors: bad input raises ValueError, TypeError or RuntimeError with a
message naming the argument, on every backend and route (the API, the ops themselves, inference
mode); the two checkers (lic_quant/_checks.py and csrc/lic_quant/checks.h) hold the same lists and,
for every bad argument, give the same exception type and the same words."""
from __future__ import annotations

import math
import re

import pytest
import torch

import lic_quant as lq
from helpers import make_inputs
from lic_quant import _checks

needs_cpp = pytest.mark.skipif(not lq.extension_available(),
                               reason="the C++ extension lic_quant._C is not built")


def _inputs(backend, shape=(2, 3)):
    return backend.to(*make_inputs(shape, torch.float32))


# ---------------------------------------------------------------------------------------------
# the API, every backend


def test_argument_errors_name_the_argument(backend):
    y, s, m = _inputs(backend)
    q = lambda *a, **k: lq.gaussian_quantize(*a, backend=backend.name, **k)  # noqa: E731
    cases = [
        (ValueError, "scales", lambda: q(y, s[:1])),
        (TypeError, "means", lambda: q(y, s, m.double())),
        (TypeError, "y", lambda: q(y.to(torch.int32), s.to(torch.int32))),
        (TypeError, "y", lambda: q(y.to(torch.complex64), s.to(torch.complex64))),
        (TypeError, "y must be a torch.Tensor", lambda: q([1.0, 2.0], s[0, :2])),
        (TypeError, "scales", lambda: q(y, [1.0])),
        (ValueError, "device", lambda: q(y, s.to("meta"))),
        (ValueError, "device", lambda: q(y, s, m.to("meta"))),
        (ValueError, "mode must be one of", lambda: q(y, s, mode="round")),
        (ValueError, "temperature", lambda: q(y, s, temperature=1.5)),
        (ValueError, "temperature", lambda: q(y, s, temperature=-0.1)),
        (ValueError, "temperature", lambda: q(y, s, temperature=float("nan"))),
        (ValueError, "temperature", lambda: q(y, s, temperature=torch.tensor(1.25))),
        (TypeError, "temperature", lambda: q(y, s, temperature=True)),
        (ValueError, "scale_bound", lambda: q(y, s, scale_bound=-1.0)),
        (ValueError, "scale_bound", lambda: q(y, s, scale_bound=math.inf)),
        (ValueError, "scale_bound", lambda: q(y, s, scale_bound=math.nan)),
        (TypeError, "scale_bound", lambda: q(y, s, scale_bound="0.1")),
        (ValueError, "likelihood_bound", lambda: q(y, s, likelihood_bound=-1e-9)),
        (TypeError, "zero_center", lambda: q(y, s, zero_center=1)),
        (TypeError, "seed", lambda: q(y, s, seed=1.5)),
        (TypeError, "seed", lambda: q(y, s, seed=torch.tensor(1.0))),
        (ValueError, "seed", lambda: q(y, s, seed=2**64)),
        (ValueError, "seed", lambda: q(y, s, seed=torch.tensor(1, device="meta"))),
        (ValueError, "temperature",
         lambda: q(y, s, seed=1, temperature=torch.tensor(0.5, device="meta"))),
        (TypeError, "temperature",
         lambda: q(y, s, seed=1, temperature=torch.tensor([0.5]).to_sparse())),
    ]
    for exc, words, call in cases:
        with pytest.raises(exc, match=re.escape(words)):
            call()
    for bound in (1.0, 2.0, math.inf, 1):
        with pytest.raises(ValueError, match="likelihood_bound"):
            q(y, s, likelihood_bound=bound, seed=1)


@pytest.mark.parametrize("name", ["y", "scales", "means"])
def test_sparse_inputs_name_the_argument(backend, name):
    args = dict(zip(("y", "scales", "means"), _inputs(backend)))
    args[name] = args[name].to_sparse()
    with pytest.raises(TypeError, match=name):
        lq.gaussian_quantize(args["y"], args["scales"], args["means"], seed=1,
                             backend=backend.name)


def test_edges_of_the_valid_ranges_work(backend):
    y, s, _ = _inputs(backend)
    q = lambda **k: lq.gaussian_quantize(y, s, backend=backend.name, **dict(dict(seed=1), **k))  # noqa: E731,E501
    _, lik = q(scale_bound=0.0, likelihood_bound=0.0)
    assert bool((lik < 1).all())
    q(likelihood_bound=1.0 - 1e-12)
    q(temperature=0.0)
    q(temperature=1)  # an int temperature is a real number
    q(seed=-(2**63))
    q(seed=2**64 - 1)


def test_bounds_checked_in_inference_mode(backend):
    """The ops' own entry checks the bounds' full range: inference mode skips the Autograd key."""
    y, s, _ = _inputs(backend)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="likelihood_bound"):
            lq.gaussian_quantize(y, s, likelihood_bound=2.0, seed=1, backend=backend.name)
        with pytest.raises(ValueError, match="scale_bound"):
            lq.gaussian_quantize(y, s, scale_bound=math.inf, seed=1, backend=backend.name)


def test_unknown_backend():
    y, s, _ = make_inputs((2, 3), torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        lq.gaussian_quantize(y, s, backend="tpu")
    with pytest.raises(ValueError, match="backend"):
        lq.gaussian_quantize(y, s, backend="gpu")


def test_unavailable_backend_says_so():
    """A kernel backend asked for tensors on a device it does not run on (or not built) raises
    an error naming the backend."""
    y, s, _ = make_inputs((2, 3), torch.float32)
    with pytest.raises((RuntimeError, ValueError), match="backend='cuda'"):
        lq.gaussian_quantize(y, s, backend="cuda")
    if torch.cuda.is_available():
        with pytest.raises((RuntimeError, ValueError), match="backend='cpu'"):
            lq.gaussian_quantize(y.cuda(), s.cuda(), backend="cpu")


def test_triton_rejects_float64(backend):
    """The Triton kernels take float16, bfloat16 and float32; float64 names the dtype."""
    if not backend.is_triton:
        pytest.skip(f"backend {backend.id} takes float64")
    y, s, _ = backend.to(*make_inputs((3, 4), torch.float64))
    with pytest.raises(TypeError, match="float64"):
        lq.gaussian_quantize(y, s, backend="triton", seed=1)


# ---------------------------------------------------------------------------------------------
# the ops themselves


def test_op_level_errors(kernel_backend):
    y, s, m = _inputs(kernel_backend)
    seed = torch.tensor(3, device=y.device)
    temp = torch.tensor(0.5, dtype=torch.float64, device=y.device)
    op = kernel_backend.forward_op
    with pytest.raises(ValueError, match="mode must be one of"):
        op(y, s, m, seed, temp, "bogus", 0.11, 1e-9, True)
    with pytest.raises(TypeError, match="seed"):
        op(y, s, m, seed.float(), temp, "sua", 0.11, 1e-9, True)
    with pytest.raises(ValueError, match="scales"):
        op(y, s[:1], m, seed, temp, "sua", 0.11, 1e-9, True)
    for sb, lb in ((-1.0, 1e-9), (math.inf, 1e-9), (math.nan, 1e-9), (0.11, 1.0),
                   (0.11, math.inf), (0.11, -1e-9)):
        name = "scale_bound" if sb != 0.11 else "likelihood_bound"
        with pytest.raises(ValueError, match=name):
            op(y, s, m, seed, temp, "sua", sb, lb, True)
        with torch.inference_mode(), pytest.raises(ValueError, match=name):
            op(y, s, m, seed, temp, "sua", sb, lb, True)
    if y.device.type == "cpu":  # reading a CUDA temperature would synchronize: not checked there
        with pytest.raises(ValueError, match="temperature"):
            op(y, s, m, seed, torch.tensor(2.0, dtype=torch.float64), "sua", 0.11, 1e-9, True)


# ---------------------------------------------------------------------------------------------
# one checker per language


def _cpp(y=None, scales=None, means=None, mode="ste", scale_bound=0.11, likelihood_bound=1e-9,
         temperature=0.5, family="gaussian"):
    """The C++ op, called directly (its own checks, as inference mode and torch.ops callers see)."""
    y = torch.zeros(2, 3) if y is None else y
    scales = torch.ones_like(y) if scales is None else scales
    temp = torch.tensor(temperature, dtype=torch.float64)
    with torch.inference_mode():
        torch.ops.lic_quant.quantize_forward(y, scales, means, torch.tensor(1), temp, mode,
                                             scale_bound, likelihood_bound, True, family)


def _python(y=None, scales=None, means=None, mode="ste", scale_bound=0.11, likelihood_bound=1e-9,
            temperature=0.5, family="gaussian"):
    y = torch.zeros(2, 3) if y is None else y
    scales = torch.ones_like(y) if scales is None else scales
    _checks.check_call(y, scales, means, family, mode, scale_bound, likelihood_bound, True)
    _checks.check_unit_interval("temperature", temperature)


@needs_cpp
def test_lists_agree():
    assert lq._ops._C.MODES == _checks.MODES == lq.MODES
    assert lq._ops._C.FAMILIES == _checks.FAMILIES == lq.FAMILIES


@needs_cpp
@pytest.mark.parametrize("bad", [
    dict(mode="round"),
    dict(family="cauchy"),
    dict(scale_bound=-1.0),
    dict(scale_bound=float("inf")),
    dict(scale_bound=float("nan")),
    dict(likelihood_bound=1.0),
    dict(likelihood_bound=-1e-9),
    dict(temperature=1.5),
    dict(temperature=float("nan")),
    dict(scales=torch.ones(3, 2)),
    dict(scales=torch.ones(2, 3, dtype=torch.float64)),
    dict(means=torch.ones(2, 2)),
    dict(means=torch.ones(2, 3, dtype=torch.float16)),
    dict(y=torch.zeros(2, 3, dtype=torch.int32)),
], ids=lambda d: next(iter(d)) + "=" + str(next(iter(d.values())))[:20])
def test_same_error_both_languages(bad):
    with pytest.raises((TypeError, ValueError)) as py:
        _python(**bad)
    with pytest.raises((TypeError, ValueError)) as cpp:
        _cpp(**bad)
    assert type(py.value) is type(cpp.value)
    name = next(iter(bad))
    assert f"lic_quant: {name} must" in str(py.value)

    # C++ prints sizes as [2, 3] and dtypes as Float where Python prints (2, 3) and torch.float32
    # (each language's own spelling of the values): the words around the values are the same.
    def words(message: str) -> str:
        first = message.split("\n")[0].split(" got ")[0]
        return re.sub(r"\([^()]*\)|\[[^\]]*\]", "", first).strip()

    assert words(str(py.value)) == words(str(cpp.value)), (str(py.value), str(cpp.value))

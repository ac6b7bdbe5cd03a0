"""The two checkers (lic_quant/_checks.py and csrc/lic_quant/checks.h) define the same rules: the
same lists of modes and families, and for every bad argument the same exception type and the same
message, whether the Python route or the C++ op rejects it (docs/spec.md section 4)."""
from __future__ import annotations

import re

import pytest
import torch

import lic_quant as lq
from lic_quant import _checks

pytestmark = pytest.mark.skipif(not lq.extension_available(), reason="the C++ extension is not built")

Y = torch.zeros(2, 3)


def _cpp(y=Y, scales=None, means=None, mode="ste", scale_bound=0.11, likelihood_bound=1e-9,
         temperature=0.5, family="gaussian"):
    """The C++ op, called directly (its own checks, as inference mode and torch.ops callers see)."""
    scales = torch.ones_like(y) if scales is None else scales
    seed = torch.tensor(1)
    temp = torch.tensor(temperature, dtype=torch.float64)
    with torch.inference_mode():
        torch.ops.lic_quant.quantize_forward(y, scales, means, seed, temp, mode, scale_bound,
                                             likelihood_bound, True, family)


def _python(y=Y, scales=None, means=None, mode="ste", scale_bound=0.11, likelihood_bound=1e-9,
            temperature=0.5, family="gaussian"):
    scales = torch.ones_like(y) if scales is None else scales
    _checks.check_call(y, scales, means, family, mode, scale_bound, likelihood_bound, True)
    _checks.check_unit_interval("temperature", temperature)


def test_lists_agree():
    assert lq._ops._C.MODES == _checks.MODES == lq.MODES
    assert lq._ops._C.FAMILIES == _checks.FAMILIES == lq.FAMILIES


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


def test_checked_in_inference_mode_by_the_op():
    """The op's own entry checks the bounds' full range (inference mode skips the Autograd key)."""
    with pytest.raises(ValueError, match="likelihood_bound must lie in"):
        _cpp(likelihood_bound=1.5)
    with pytest.raises(ValueError, match="scale_bound must be finite"):
        _cpp(scale_bound=float("inf"))

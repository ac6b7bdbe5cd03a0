"""docs/spec.md section 4, shapes and layouts: outputs have y's shape; non-contiguous and
channels-last inputs give the values (and gradients) of their contiguous copies, bit for bit;
empty tensors give empty outputs and gradients."""
from __future__ import annotations

import pytest
import torch

from helpers import DTYPES, lik_dtype, make_inputs, make_upstream, run, same_bits

SHAPE = (2, 5, 6, 7)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_and_channels_last(backend, dtype):
    backend.need_dtype(dtype)
    y, s, m = make_inputs(SHAPE, dtype, seed=11)
    g_yhat, g_lik = make_upstream(SHAPE, dtype, lik_dtype(dtype))
    fn = backend.fn(mode="sua", temperature=0.5, seed=3)
    base = run(fn, y, s, m, g_yhat, g_lik)
    channels_last = [t.contiguous(memory_format=torch.channels_last) for t in (y, s, m)]
    strided = [t.transpose(1, 3).contiguous().transpose(1, 3) for t in (y, s, m)]
    for variant in (channels_last, strided):
        assert not variant[0].is_contiguous()
        # run() clones the leaves, which keeps their strides (preserve_format)
        got = run(fn, *variant, g_yhat, g_lik)
        assert got[0].shape == y.shape and got[1].shape == y.shape
        assert same_bits(got[0], base[0]) and same_bits(got[1], base[1])
        for a, b in zip(got[2], base[2]):
            assert same_bits(a.contiguous(), b)


def test_transposed_view(backend):
    """A view whose logical shape differs from the storage order: the noise index is the
    row-major index of the view (section 3), so it equals its contiguous copy."""
    y, s, m = make_inputs(SHAPE, torch.float32, seed=11)
    yt, st, mt = (t.transpose(1, 3) for t in (y, s, m))
    assert not yt.is_contiguous()
    g_yhat, g_lik = make_upstream(yt.shape, torch.float32, torch.float32)
    fn = backend.fn(mode="noise", seed=3)
    got = run(fn, yt, st, mt, g_yhat, g_lik)
    want = run(fn, yt.contiguous(), st.contiguous(), mt.contiguous(), g_yhat, g_lik)
    assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])
    for a, b in zip(got[2], want[2]):
        assert same_bits(a.contiguous(), b)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (2, 0, 3)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty(backend, dtype, shape):
    backend.need_dtype(dtype)
    y = torch.empty(shape, dtype=dtype, requires_grad=True)
    s = torch.empty(shape, dtype=dtype, requires_grad=True)
    m = torch.empty(shape, dtype=dtype, requires_grad=True)
    y_hat, lik = backend.quantize(y, s, m, mode="mixed", seed=1)
    assert y_hat.shape == lik.shape == torch.Size(shape)
    assert y_hat.dtype == dtype and lik.dtype == lik_dtype(dtype)
    (y_hat.double().sum() + lik.double().sum()).backward()
    for t in (y, s, m):
        assert t.grad.shape == torch.Size(shape) and t.grad.dtype == dtype

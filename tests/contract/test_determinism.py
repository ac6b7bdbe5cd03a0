"""docs/spec.md sections 3-4, reproducibility: the seed (an int, its unsigned spelling, a 0-dim
int64 tensor, or None drawn from torch's generator of y's device) and the temperature (a float or
a one-element tensor of any shape) give the same bits however they are given, and the CPU thread
count changes nothing."""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from helpers import make_inputs, make_upstream, run, same_bits


def _same(a, b):
    return same_bits(a[0], b[0]) and same_bits(a[1], b[1])


def test_seed_none_follows_torch_manual_seed(backend):
    y, s, m = make_inputs((4, 50), torch.float32)
    torch.manual_seed(0)
    a = backend.quantize(y, s, m, mode="noise")
    b = backend.quantize(y, s, m, mode="noise")
    torch.manual_seed(0)
    c = backend.quantize(y, s, m, mode="noise")
    assert _same(a, c) and not torch.equal(a[0], b[0])
    # the drawn seed is make_seed(None, device)'s, so a run can be replayed with it
    torch.manual_seed(3)
    drawn = backend.quantize(y, s, m, mode="noise")
    torch.manual_seed(3)
    seed = lq.make_seed(None, torch.device(backend.device))
    assert _same(drawn, backend.quantize(y, s, m, mode="noise", seed=seed))


def test_seed_forms_agree(backend):
    """An int seed, the same 64 bits as an unsigned int, and a 0-dim int64 tensor (on the CPU or
    on y's device) give the same noise."""
    y, s, m = make_inputs((4, 50), torch.float32)
    want = backend.quantize(y, s, m, mode="noise", seed=-1)
    for seed in (2**64 - 1, torch.tensor(-1), torch.tensor(-1, device=backend.device)):
        assert _same(want, backend.quantize(y, s, m, mode="noise", seed=seed)), seed
    assert not torch.equal(want[0], backend.quantize(y, s, m, mode="noise", seed=1)[0])


@pytest.mark.parametrize("temp_shape", [(), (1,), (1, 1)], ids=str)
@pytest.mark.parametrize("temp_dtype", [torch.float64, torch.float32], ids=str)
def test_temperature_tensor_equals_float(backend, temp_shape, temp_dtype):
    """A one-element temperature tensor gives what the float gives, and its own shape does not
    broadcast the outputs (they have y's shape)."""
    y, s, m = make_inputs((3, 40), torch.float32)
    want = backend.quantize(y, s, m, mode="sua", temperature=0.25, seed=8)
    for device in {"cpu", backend.device}:
        t = torch.full(temp_shape, 0.25, dtype=temp_dtype, device=device)
        got = backend.quantize(y, s, m, mode="sua", temperature=t, seed=8)
        assert got[0].shape == got[1].shape == y.shape
        assert _same(want, got), device


def test_same_bits_with_one_and_two_threads(backend):
    """Several parallel chunks of the C++ kernels (and of the reference's and the interpreter's
    torch work); thread counts only govern CPU work."""
    if backend.device != "cpu":
        pytest.skip(f"backend {backend.id} runs on {backend.device}: no CPU threads to vary")
    shape = (4, 16, 24, 24) if backend.is_interpreter else (8, 16, 24, 24)
    y, s, m = make_inputs(shape, torch.float32, seed=5)
    g_yhat, g_lik = make_upstream(y.shape, torch.float32, torch.float32)
    fn = backend.fn(mode="sua", seed=77, temperature=0.3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = run(fn, y, s, m, g_yhat, g_lik)
        torch.set_num_threads(2)
        b = run(fn, y, s, m, g_yhat, g_lik)
    finally:
        torch.set_num_threads(before)
    assert _same(a, b)
    for ga, gb in zip(a[2], b[2]):
        assert same_bits(ga, gb)


def test_reference_function_takes_one_temperature_value():
    """gaussian_quantize_reference (explicit noise) takes a one-element temperature tensor of any
    shape; several values are not one temperature."""
    y, s, _ = make_inputs((4,), torch.float32)
    u = lq.uniform_noise(y.shape, 1)
    out = lq.gaussian_quantize_reference(y, s, None, u, temperature=torch.tensor([[0.5]]))
    assert out[0].shape == out[1].shape == y.shape
    with pytest.raises(RuntimeError):
        lq.gaussian_quantize_reference(y, s, None, u, temperature=torch.tensor([0.5, 0.5]))

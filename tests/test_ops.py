"""The registered torch ops: opcheck, gradcheck on the smooth part, torch.compile without graph
breaks or recompiles, and the argument errors of docs/spec.md section 4."""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from helpers import make_inputs

pytestmark = pytest.mark.skipif(not lq.extension_available(), reason="C++ extension not built")


def op_args(dtype, mode, with_means=True, zero_center=True):
    y, s, m = make_inputs((2, 3, 5), dtype, with_means=with_means)
    seed = torch.tensor(123, dtype=torch.int64)
    temp = torch.tensor(0.4, dtype=torch.float64)
    return y, s, m, seed, temp, mode, 0.11, 1e-9, zero_center


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", lq.MODES)
def test_opcheck_forward(dtype, mode):
    y, s, m, *rest = op_args(dtype, mode)
    for means in (m, None):
        args = (y.requires_grad_(), s.requires_grad_(), means, *rest)
        torch.library.opcheck(torch.ops.lic_quant.quantize_forward.default, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_backward_and_noise(dtype):
    y, s, m, seed, temp, *_ = op_args(dtype, "sua")
    lik_dt = torch.float64 if dtype == torch.float64 else torch.float32
    g_yhat, g_lik = torch.randn_like(y), torch.randn(y.shape, dtype=lik_dt)
    for mask in ([True, True, True], [False, True, False]):
        for gy in (g_yhat, None):
            torch.library.opcheck(torch.ops.lic_quant.quantize_backward.default,
                                  (gy, g_lik, y, s, m, seed, temp, "sua", 0.11, 1e-9, True, mask))
    torch.library.opcheck(torch.ops.lic_quant.uniform_noise.default, (seed, [3, 4]))


@pytest.mark.parametrize("zero_center", [True, False])
def test_gradcheck_smooth_part(zero_center):
    # noise mode: the surrogate is y + u exactly, so finite differences see the same function.
    # Scales above the scale bound and likelihoods above the likelihood bound: the smooth part.
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(3, 7, generator=g, dtype=torch.float64) * 0.8).requires_grad_()
    s = (torch.rand(3, 7, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
    m = (torch.randn(3, 7, generator=g, dtype=torch.float64) * 0.5).requires_grad_()

    def fn(y, s, m):
        return lq.gaussian_quantize(y, s, m, mode="noise", seed=17, zero_center=zero_center,
                                    backend="cpu")

    assert (fn(y, s, m)[1] > 1e-6).all()
    torch.autograd.gradcheck(fn, (y, s, m))


def test_compile_fullgraph_fresh_seed_no_recompile():
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    @torch.compile(fullgraph=True, backend=counting_backend)
    def step(y, s, m, seed, temperature):
        y_hat, lik = lq.gaussian_quantize(y, s, m, mode="sua", seed=seed, temperature=temperature)
        return (y_hat - y).square().mean() - lik.log2().mean()

    y, s, m = (t.requires_grad_() for t in make_inputs((2, 4, 6), torch.float32))
    results = []
    for i in range(4):
        seed = torch.tensor(1000 + i, dtype=torch.int64)
        temp = torch.tensor(1.0 - 0.2 * i, dtype=torch.float64)
        loss = step(y, s, m, seed, temp)
        loss.backward()
        eager = lq.gaussian_quantize(y.detach(), s.detach(), m.detach(), mode="sua", seed=seed,
                                     temperature=temp)
        ref_loss = (eager[0] - y.detach()).square().mean() - eager[1].log2().mean()
        assert torch.allclose(loss.detach(), ref_loss, rtol=1e-6)
        results.append(loss.item())
    assert len(compiles) == 1 and len(set(results)) == 4


def test_compile_inductor_matches_eager():
    @torch.compile(fullgraph=True)
    def f(y, s, m, seed):
        y_hat, lik = lq.gaussian_quantize(y, s, m, mode="mixed", seed=seed)
        return y_hat * 2, -lik.log2()

    y, s, m = make_inputs((3, 5, 7), torch.float32)
    seed = torch.tensor(5, dtype=torch.int64)
    got = f(y, s, m, seed)
    want = lq.gaussian_quantize(y, s, m, mode="mixed", seed=seed)
    assert torch.equal(got[0], want[0] * 2) and torch.allclose(got[1], -want[1].log2())


def test_compile_with_generator_seed():
    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(y, s):
        return lq.gaussian_quantize(y, s, mode="noise")[0]

    y, s, _ = make_inputs((4, 9), torch.float32, with_means=False)
    torch.manual_seed(3)
    a = f(y, s)
    b = f(y, s)
    assert not torch.equal(a, b)  # a fresh seed per call, drawn inside the graph


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_argument_errors_name_the_argument(backend):
    y, s, m = make_inputs((2, 3), torch.float32)
    q = lambda *a, **k: lq.gaussian_quantize(*a, backend=backend, **k)  # noqa: E731
    with pytest.raises(ValueError, match="scales"):
        q(y, s[:1])
    with pytest.raises(TypeError, match="means"):
        q(y, s, m.double())
    with pytest.raises(TypeError, match="y"):
        q(y.to(torch.int32), s.to(torch.int32))
    with pytest.raises(TypeError, match="y"):
        q(y.to(torch.complex64), s.to(torch.complex64))
    with pytest.raises(ValueError, match="mode"):
        q(y, s, mode="round")
    with pytest.raises(ValueError, match="temperature"):
        q(y, s, temperature=1.5)
    with pytest.raises(ValueError, match="temperature"):
        q(y, s, temperature=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        q(y, s, temperature=float("nan"))
    with pytest.raises(ValueError, match="temperature"):
        q(y, s, temperature=torch.tensor(1.25))
    with pytest.raises(ValueError, match="scale_bound"):
        q(y, s, scale_bound=-1.0)
    with pytest.raises(ValueError, match="likelihood_bound"):
        q(y, s, likelihood_bound=-1e-9)
    with pytest.raises(TypeError, match="seed"):
        q(y, s, seed=1.5)
    with pytest.raises(TypeError, match="scales"):
        q(y, [1.0])
    if torch.device("meta").type == "meta":
        with pytest.raises(ValueError, match="device"):
            q(y, s.to("meta"))


def test_unknown_or_unavailable_backend():
    y, s, _ = make_inputs((2, 3), torch.float32)
    with pytest.raises(ValueError, match="backend"):
        lq.gaussian_quantize(y, s, backend="tpu")
    with pytest.raises((RuntimeError, ValueError), match="cuda"):
        lq.gaussian_quantize(y, s, backend="cuda")


def test_op_level_errors_are_clean():
    y, s, m, seed, temp, *_ = op_args(torch.float32, "sua")
    with pytest.raises(ValueError, match="mode"):
        torch.ops.lic_quant.quantize_forward(y, s, m, seed, temp, "bogus", 0.11, 1e-9, True)
    with pytest.raises(ValueError, match="temperature"):
        torch.ops.lic_quant.quantize_forward(y, s, m, seed, torch.tensor(2.0, dtype=torch.float64),
                                             "sua", 0.11, 1e-9, True)
    with pytest.raises(TypeError, match="seed"):
        torch.ops.lic_quant.quantize_forward(y, s, m, seed.float(), temp, "sua", 0.11, 1e-9, True)
    with pytest.raises(ValueError, match="scales"):
        torch.ops.lic_quant.quantize_forward(y, s[:1], m, seed, temp, "sua", 0.11, 1e-9, True)
